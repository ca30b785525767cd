"""The PyTorch peer of `bench.decoder`: PEFT CAUSAL_LM prompt tuning.

`AutoModelForCausalLM` from the config.json our export writes for the same
shapes (random init, eager attention, float32 on CPU, bf16 autocast on
CUDA), wrapped by `peft.PromptTuningConfig(task_type=CAUSAL_LM,
num_virtual_tokens=P)` (P prompt rows before every row, as ours); HF's
Adafactor with the paper's prompt settings (lr 0.3, weight decay 1e-5,
decay -0.8, no parameter scaling). The rows are the parent's; labels are
-100 on the inputs, so the loss is on the targets, as ours. Imports no JAX.
Run as a worker: `python -m prompt_tuning.bench.decoder_peer '<JSON>'`.
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import sys
import time
from typing import Any, Dict

from prompt_tuning.bench.spec import RESULT_MARKER


def run(payload: Dict[str, Any]) -> Dict[str, Any]:
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top

  bench = payload["bench"]
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  torch.manual_seed(bench["seed"])
  hf = dict(payload["hf_config"])
  config = transformers.AutoConfig.for_model(
      hf.pop("model_type"), attn_implementation="eager", use_cache=False,
      **{k: v for k, v in hf.items() if k not in ("architectures",)})
  with device:
    model = transformers.AutoModelForCausalLM.from_config(config)
  model = peft.get_peft_model(model, peft.PromptTuningConfig(
      task_type=peft.TaskType.CAUSAL_LM,
      num_virtual_tokens=bench["prompt"],
      prompt_tuning_init=peft.PromptTuningInit.RANDOM))
  model.to(device)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer = Adafactor(trainable, lr=0.3, weight_decay=1e-5,
                        decay_rate=-0.8, scale_parameter=False,
                        relative_step=False, warmup_init=False,
                        clip_threshold=1.0)
  rows = torch.as_tensor(payload["rows"], dtype=torch.long, device=device)
  labels = rows.clone()
  labels[:, :bench["inputs"]] = -100
  batch = {"input_ids": rows, "attention_mask": torch.ones_like(rows),
           "labels": labels}
  autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda
              else contextlib.nullcontext())
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return float(loss.detach())

  losses, times = [], []
  for i in range(bench["warmup"] + bench["steps"]):
    start = time.perf_counter()
    losses.append(step())
    sync()
    if i >= bench["warmup"]:
      times.append(time.perf_counter() - start)
  peak = (int(torch.cuda.max_memory_allocated()) if cuda else
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  return {"impl": "peft", "backend": "cuda" if cuda else "cpu",
          "torch": torch.__version__, "peft": peft.__version__,
          "transformers": transformers.__version__,
          "torch_threads": torch.get_num_threads(),
          "step_s": statistics.median(times),
          "params_trainable": sum(p.numel() for p in trainable),
          "peak_bytes": peak, "loss_first": losses[0],
          "loss_last": losses[-1]}


def main(argv) -> None:
  print(RESULT_MARKER + json.dumps(run(json.loads(argv[1]))), flush=True)


if __name__ == "__main__":
  main(sys.argv)
