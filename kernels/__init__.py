"""llmcore's compute kernels: each op a pure function over tensors, Triton and PyTorch paths.

Public ops (the model and losses use only these):

- ``flash_attention(q, k, v, causal=True, doc_ids=None, softmax_scale=None)``
- ``linear_cross_entropy(h, w, labels, ignore_index=-100, ignore_ids=None, z_loss=0.0,
  label_smoothing=0.0, reduction="mean")``
- ``rms_norm(x, weight, eps=1e-6)``, ``swiglu(gate, up)``, ``apply_rope(q, k, cos, sin)``
- ``grad_sq_norm(grads)``, ``perturb_(params, grads, scale, saved)``, ``restore_(params, saved)``:
  SAM's multi-tensor norm, perturb-with-exact-copy and restore
- ``future_summary_loss(w, mtp_h=None, mtp_labels=None, mtp_weight=None, fsp_h=None, bag=None,
  fsp_rows=None, token_weight=None, fsp_weight=1.0, norm="vocab", ignore_index=-100,
  ignore_ids=None)``: MTP heads and the FSP multi-hot BCE over the shared output weight
- ``linear_distill_loss(h, w, labels, *, teacher_ids=None, teacher_logprobs=None,
  teacher_h=None, teacher_w=None, alpha=0.5, temperature=1.0, kd_weight=None, reverse=False,
  ignore_index=-100, ignore_ids=None, reduction="mean", z_loss=0.0)`` -> ``DistillLoss(loss,
  hard, soft, n_tokens)``: next-token CE + KD (sparse or dense teacher) in one chunked pass;
  ``teacher_entropy(teacher_h, teacher_w, temperature=1.0)`` -> (entropy, lse)
- ``loss_target_mask(labels, ignore_index=-100, ignore_ids=None)``: the one rule for which
  targets take a loss (``kernels/loss_targets.py``)

The backend is picked per call by device (Triton on CUDA, PyTorch elsewhere);
``LLMCORE_KERNELS=torch|triton|flash_attn`` forces one (see ``kernels/_dispatch.py``).

Layout of an op: ``kernels/<op>.py`` holds the PyTorch path and the public function and imports
only torch; ``kernels/<op>_triton.py`` holds the ``@triton.jit`` kernels, their launchers and the
``autograd.Function``, and is imported on the first Triton call; ``kernels/<op>_reference.py``
is the plain float64-capable definition the tests compare with. The split keeps this package
cheap to import: ``import transformers`` imports any top-level ``kernels`` package, and it must
not pull in Triton. The vocabulary losses share one chunked driver, ``kernels/vocab_chunks.py``.

``kernels.swiglu`` and ``kernels.linear_cross_entropy`` name the public functions, which shadow
their same-named modules as package attributes; reach the modules with ``from
kernels.linear_cross_entropy import ...`` or ``importlib.import_module``.
"""

from kernels.attention import flash_attention
from kernels.future_summary import future_summary_loss
from kernels.linear_cross_entropy import linear_cross_entropy
from kernels.linear_distill import DistillLoss, linear_distill_loss, teacher_entropy
from kernels.loss_targets import loss_target_mask
from kernels.rmsnorm import rms_norm
from kernels.rope import apply_rope
from kernels.sam import grad_sq_norm, perturb_, restore_
from kernels.swiglu import swiglu

__version__ = "0.1.0"

__all__ = ["flash_attention", "linear_cross_entropy", "rms_norm", "swiglu", "apply_rope",
           "grad_sq_norm", "perturb_", "restore_", "future_summary_loss", "loss_target_mask",
           "linear_distill_loss", "teacher_entropy", "DistillLoss"]
