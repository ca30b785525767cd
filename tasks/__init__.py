"""SeqIO task registrations, importable as `prompt_tuning.tasks` once installed.

Each module registers its tasks when imported (once per process, however it
is imported); `quickstart` holds the synthetic tasks of the README quickstart.
"""
