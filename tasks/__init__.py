"""SeqIO task registrations: `tasks.<module>` from the repository root.

A non-editable `pip install .` also installs them as `prompt_tuning.tasks`
(the legacy editable install of pip 23 does not map that name).

Each module registers its tasks when imported (once per process, however it
is imported); `quickstart` holds the synthetic tasks of the README quickstart.
"""
