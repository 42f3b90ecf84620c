"""The hook engine: scoped hooks for users, and the one way the library runs a patched model.

    with cc.hooks(model, {"blocks.0.attn.hook_z": lambda z, site: z * 0}):
        logits = model(tokens)                 # user interventions; hooks come off in finally
    ran = run(model, tokens, replace={...}, record=[...], stop_after=...)   # the library's runs

`attach` registers and removes hooks; `run` (capture, patching, attribution, faithfulness all go
through it) records, replaces and freezes activations and stops early; `Runner` stacks many
patched variants of one input along the batch, resuming from a cached layer where it can.
"""

from circuits.hooks.attach import HookFn, attach, hook_count, hooks, require_fired, require_once
from circuits.hooks.run import Ran, run, run_model

__all__ = [
    "HookFn",
    "Ran",
    "attach",
    "hook_count",
    "hooks",
    "require_fired",
    "require_once",
    "run",
    "run_model",
]
