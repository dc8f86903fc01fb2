"""torch.compile for the training step, with a way back to eager (`--compile auto|on|off`).

Compiling fuses the step's many small kernels (the batch plan, the losses, the memory update; the
backbone's element-wise tails) into a few, which is what a GPU bound by kernel launches needs. The
step has no graph break (tests/test_compile.py checks it with `torch._dynamo.explain` on the CPU),
so each function compiles whole. Compilation happens at the first call; if it fails (a backend or
device the compiler does not support), that function runs eagerly from then on and the run says so
in one line. Every compiled function is pure or fails before it mutates anything, so the retry in
eager computes exactly what the eager run would have.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from dsgl_cli.errors import DsglError


def compile_enabled(choice: str, device: torch.device) -> bool:
    """`auto` compiles on CUDA only: on a CPU the first compilation costs more than it saves on a short run."""
    return choice == "on" or (choice == "auto" and device.type == "cuda")


class Compiled:
    """``fn`` through torch.compile, or eagerly once compiling it has failed."""

    def __init__(self, fn: Callable[..., Any], name: str, enabled: bool,
                 notify: Optional[Callable[[str], None]] = None, **options: Any) -> None:
        self.fn, self.name, self.notify = fn, name, notify
        self.compiled: Optional[Callable[..., Any]] = torch.compile(fn, **options) if enabled else None

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except (DsglError, KeyboardInterrupt):
            raise
        except Exception as exc:   # noqa: BLE001 - any compiler failure: the eager function is the reference
            self.compiled = None
            cause: BaseException = exc
            # the compiler wraps the backend's own error (as the cause, or as inner_exception)
            while (inner := cause.__cause__ or getattr(cause, "inner_exception", None)) is not None:
                cause = inner
            reason = (str(cause).strip().splitlines() or [""])[0][:200]
            if self.notify is not None:
                self.notify(f"note: torch.compile failed for {self.name} ({type(cause).__name__}: {reason}); "
                            "it runs eagerly from here on")
            return self.fn(*args, **kwargs)
