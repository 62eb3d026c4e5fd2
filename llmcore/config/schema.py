"""Typed run configuration: dataclasses loaded from YAML plus dotted command-line overrides.

Used by the CLI, the trainer and `llmcore.load`. Every key is checked: an unknown key is an
error naming the key, the file and the nearest valid key; a value of the wrong type is an error
naming the key and the expected type. Recipe sections (`sam: {rho: 0.05}`) are typed by the
recipe's own `Config` dataclass, found through the recipe registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from llmcore.config.batch import resolve_micro_batch_size
from llmcore.errors import ConfigError


@dataclass
class ModelConfig:
    """Architecture. Unset (None) fields come from the preset; a set field overrides it."""

    preset: str = "tiny"
    """Named size from `llmcore.model.presets` (tiny, 20m, 60m, 150m, 1b, 3b, 8b)."""
    vocab_size: int | None = None
    """None: taken from the tokenizer, so model and tokenizer cannot disagree."""
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_hidden: int | None = None
    max_seq_len: int | None = None
    rope_theta: float | None = None
    norm_eps: float | None = None
    tie_embeddings: bool | None = None
    doc_mask: bool = True
    """Attend only within a document of a packed window (no leakage across documents)."""
    dropout: float | None = None
    """Dropout on attention probabilities and on each residual branch's output, in training
    only (None: the preset's, 0 in every preset). At 0 training is bit-identical to a model
    without dropout and draws no random numbers; above 0 attention leaves the fused kernel
    for PyTorch's SDPA with a dense mask (slower, more memory)."""


@dataclass
class SourceConfig:
    """One data source of a weighted mixture."""

    path: str = ""
    """A folder made by `llmcore data prepare`."""
    weight: float = 1.0
    name: str = ""
    """Label in logs and token accounting; defaults to the folder name."""
    max_tokens: int | None = None
    """Serve only this source's first `max_tokens` tokens in stream order (`max_tokens //
    data.seq_len` windows, reshuffled each epoch): the same documents for every seed and
    weight, a smaller budget's windows a subset of a larger one's. None: the whole split;
    0 only with weight 0 (never drawn). More than the split holds is an error."""
    skip_tokens: int = 0
    """Start the source after its first `skip_tokens` tokens (`skip_tokens // data.seq_len`
    windows), `max_tokens` counting from there: `skip_tokens: N` serves exactly the windows
    that `max_tokens: N` left out (a budget divided between two stages)."""


@dataclass
class DataConfig:
    format: str = "tokens"
    """tokens: packed windows of prepared shards | sft: prompt/answer jsonl, loss on answers."""
    path: str = ""
    """tokens: prepared data folder (`llmcore data prepare --out`), the single source when
    `sources` is empty. sft: the training jsonl."""
    sources: list[SourceConfig] = field(default_factory=list)
    """Weighted mixture; when given, `path` is only used for validation data if `val_path` is unset."""
    mixing: str = "random"
    """How the mixture picks the source of each window. random: a seeded draw per window (shares
    hold on average). exact: the source furthest behind its weight's share, so every prefix of
    the stream holds each source within about one window of its share by tokens, deterministically
    and for any world size (use it when the proportions themselves are the experiment)."""
    val_path: str = ""
    """tokens: folder whose `val` split is used for evaluation; default: `path` (or the first
    source). sft: the validation jsonl (default: none)."""
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    tokenizer: str = ""
    """Tokenizer folder; default: `<path>/tokenizer` (written there by `data prepare`)."""
    seq_len: int = 256
    verify: str = "lazy"
    """Shard checks: `size` (at open: byte sizes, document indexes), `lazy` (also each shard's
    sha256, once, the first time a window reads it: catches in-vocabulary corruption for one pass
    over the data), `full` (sha256 and every token id at open)."""
    reverse: bool = False
    """Right-to-left windows (for a reverse LM, e.g. FSP-RevLM targets)."""
    sidecars: list[str] = field(default_factory=list)
    """tokens: side-cars (written beside the shards, `<path>/sidecars/<name>/`) whose rows for
    each window join the batch as `batch[name]` [B, T, ...], aligned with `labels`; every
    source (and the validation folder) must carry each of them. sft: per-example side-cars
    beside the jsonl (`<stem>.sidecars/<name>/`, `llmcore.data.example_sidecar`) as
    `batch[name]` [B, ...], like `sft_fields`; every evaluation jsonl must carry them too."""
    sft_fields: list[str] = field(default_factory=list)
    """sft: extra jsonl fields (a number or a fixed-length list of numbers on every line)
    carried to the batch as `batch[name]` [B, ...]."""


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.1
    """Applied to matrices only; norms and other 1-D parameters are never decayed."""
    beta1: float = 0.9
    beta2: float = 0.95
    """0.95 rather than 0.999: the usual choice for LM pretraining stability."""
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Global L2 norm clip; 0 disables."""


@dataclass
class ScheduleConfig:
    kind: str = "cosine"
    """cosine | wsd (warmup, stable, linear anneal) | constant (after warmup)."""
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine floor, WSD anneal target)."""
    anneal_fraction: float = 0.2
    """WSD only: fraction of max_steps spent in the final linear anneal."""


@dataclass
class TrainConfig:
    max_steps: int = 1000
    out_dir: str = "runs/default"
    seed: int = 0
    micro_batch_size: int | str = "auto"
    """Sequences per forward pass on one process. `auto`: the largest divisor of
    global_batch_size / world size that is at most max_micro_batch_size (fewest accumulation
    steps that fit), so the config runs unchanged on any number of processes."""
    max_micro_batch_size: int = 8
    """With micro_batch_size=auto: the most sequences one process may take in one pass (memory)."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all processes; a multiple of micro_batch * world."""
    precision: str = "auto"
    """auto (bf16 autocast on a GPU that supports it, else fp32) | fp32 | bf16."""
    compile: bool = False
    """torch.compile each transformer block as one graph (the kernels are opaque custom ops to
    it); the first steps pay the compilation (seconds to minutes)."""
    z_loss: float = 0.0
    log_every: int = 10
    eval_every: int = 0
    """0: evaluate only at the end."""
    eval_batches: int = 20
    save_every: int = 0
    """0: save only at the end (and on SIGTERM/SIGUSR1)."""
    save_at_steps: list[int] = field(default_factory=list)
    """Also save at exactly these steps, e.g. log-spaced token budgets for `llmcore
    sensitivity` (`[16, 32, 64, 128]`); with keep_last=0 every one of them is kept."""
    keep_last: int = 3
    progress: bool = True
    """A progress bar on a terminal (else, and when false, one log line every log_every steps)."""
    peak_flops: float = 0.0
    """Peak FLOP/s of one device for MFU; 0 looks the device up and logs no MFU if unknown."""
    init_from: str = ""
    """Checkpoint to start from (weights only), e.g. one made by `import-hf`."""
    ntp_weight: float = 1.0
    """Weight of the next-token term; 0 turns it off (a classifier-only run: then another
    term must carry the loss). A recipe's `ntp_weight` hook multiplies it."""
    keep_best_on: str = ""
    """An evaluation set (`val`, or a name in `eval.sets`) whose loss picks the best
    checkpoint: saved at each evaluation that improves it, never pruned, `out_dir/best`
    pointing at it. Empty: no best checkpoint."""
    early_stop_patience: int = 0
    """Stop after this many evaluations in a row without a better `keep_best_on` loss (0: never)."""
    early_stop_min_delta: float = 0.0
    """An evaluation counts as better only when it lowers the best `keep_best_on` loss by more
    than this (for the best checkpoint and for early stopping alike)."""
    max_nonfinite_steps: int = 10
    """Abort (without saving) after this many consecutive steps with a non-finite gradient norm
    (0: never): a run of them means broken weights or data, not a spike."""
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    """Where metrics go: `jsonl` (metrics.jsonl, always), `tensorboard` (out_dir/tensorboard/),
    `wandb` (offline unless WANDB_API_KEY is set); the last two are optional extras."""
    wandb_project: str = "llmcore"
    """W&B project of the run when `wandb` is in train.loggers (the run is named for out_dir)."""
    allow_config_change: bool = False
    """Resume even though model, data, optim or the batch sizes differ from the checkpoint's
    config (refused by default, naming the keys)."""

    def micro_batch_for(self, world_size: int) -> int:
        """micro_batch_size on `world_size` processes (`auto` resolved; an explicit size checked)."""
        return resolve_micro_batch_size(self.micro_batch_size, self.global_batch_size,
                                        self.max_micro_batch_size, world_size)


@dataclass
class EngineConfig:
    backend: str = "single"
    """single | ddp | deepspeed."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (1, 2, 3); 0 with other backends."""
    deepspeed_config: str = ""
    """Optional JSON whose keys override the generated DeepSpeed config."""
    offload: bool = False
    """DeepSpeed: offload optimizer state to CPU."""


@dataclass
class EvalConfig:
    sets: dict[str, str] = field(default_factory=dict)
    """Named evaluation sets beside the default `val`: name -> a prepared data folder (its
    `val` split) or, with data.format=sft, a jsonl. Each is scored at every evaluation
    (train.eval_every) on the same windows, with the run's transforms, and logged as
    `eval/<name>/loss` (and `/ppl`, `/tokens`)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recipes: list[str] = field(default_factory=list)
    """Recipe names to compose, in order; each may have a section of its own name."""
    recipe: dict[str, Any] = field(default_factory=dict)
    """Filled by the loader: recipe name -> that recipe's typed Config instance."""

    def validate(self) -> Config:
        """Check cross-field rules; raise ConfigError naming the key."""
        _one_of("schedule.kind", self.schedule.kind, ("cosine", "wsd", "constant"))
        _one_of("engine.backend", self.engine.backend, ("single", "ddp", "deepspeed"))
        _one_of("train.precision", self.train.precision, ("auto", "fp32", "bf16"))
        _one_of("data.verify", self.data.verify, ("size", "lazy", "full"))
        _one_of("data.format", self.data.format, ("tokens", "sft"))
        _one_of("data.mixing", self.data.mixing, ("random", "exact"))
        for i, src in enumerate(self.data.sources):
            if src.skip_tokens < 0:
                raise ConfigError(f"data.sources[{i}].skip_tokens={src.skip_tokens} must be >= 0")
            if src.max_tokens is not None and (src.max_tokens < 0 or (src.max_tokens == 0 and src.weight != 0)):
                raise ConfigError(f"data.sources[{i}].max_tokens={src.max_tokens} must be > 0 "
                                  "(0 only for a source of weight 0), or unset for the whole split")
        if self.data.format == "sft" and (self.data.sources or not self.data.tokenizer):
            raise ConfigError("data.format=sft reads one jsonl (data.path) and needs data.tokenizer; "
                              "data.sources is for token shards")
        _one_of("optim.name", self.optim.name, ("adamw",))
        if self.engine.backend == "deepspeed" and self.engine.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"engine.zero_stage must be 0-3, got {self.engine.zero_stage}")
        if self.engine.backend != "deepspeed" and self.engine.zero_stage:
            raise ConfigError("engine.zero_stage needs engine.backend=deepspeed")
        for key in ("train.max_steps", "train.max_micro_batch_size", "train.global_batch_size", "data.seq_len"):
            if _get(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {_get(self, key)}")
        self.train.micro_batch_for(1)  # the one batch rule; `auto` is resolved again when the run starts
        _check_numbers(self)
        _check_loggers(self.train.loggers)
        if not 0.0 <= self.schedule.anneal_fraction <= 1.0:
            raise ConfigError(f"schedule.anneal_fraction must be in [0, 1], got {self.schedule.anneal_fraction}")
        for name in self.eval.sets:
            if name == "val" or "/" in name or not name:
                raise ConfigError(f"eval.sets: {name!r} is not a usable set name (not empty, no '/', "
                                  "and `val` is the default set)")
        if self.train.keep_best_on and self.train.keep_best_on not in ("val", *self.eval.sets):
            raise ConfigError(f"train.keep_best_on={self.train.keep_best_on!r} is not an evaluation set "
                              f"(have: {', '.join(['val', *self.eval.sets])})")
        if self.train.early_stop_patience < 0 or (self.train.early_stop_patience and not self.train.keep_best_on):
            raise ConfigError("train.early_stop_patience needs train.keep_best_on (the set it watches) "
                              f"and must be >= 0, got {self.train.early_stop_patience}")
        bad = [s for s in self.train.save_at_steps if not 0 < s <= self.train.max_steps]
        if bad:
            raise ConfigError(f"train.save_at_steps has {bad}: each step must be in [1, train.max_steps="
                              f"{self.train.max_steps}]")
        if not self.data.path and not self.data.sources:
            raise ConfigError("data.path is empty: give a folder made by `llmcore data prepare`")
        return self

    def to_dict(self) -> dict:
        """Plain nested dict (recipe sections at top level), loadable again by `from_dict`."""
        out = {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "recipe"}
        for name, sub in self.recipe.items():
            out[name] = _to_plain(sub)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# key -> (lowest allowed, lowest included?, highest allowed, highest included?, nearest valid value
# to suggest); a NaN fails every comparison, so it is refused with the same message
_RANGES = {
    "optim.lr": (0.0, True, None, True, "e.g. 3e-4"),
    "optim.weight_decay": (0.0, True, None, True, "0 disables it"),
    "optim.beta1": (0.0, True, 1.0, False, "e.g. 0.9"),
    "optim.beta2": (0.0, True, 1.0, False, "e.g. 0.95"),
    "optim.eps": (0.0, False, None, True, "e.g. 1e-8"),
    "optim.grad_clip": (0.0, True, None, True, "0 disables clipping"),
    "schedule.warmup_steps": (0, True, None, True, "0 for no warmup"),
    "schedule.min_lr_ratio": (0.0, True, 1.0, True, "e.g. 0.1"),
    "train.log_every": (1, True, None, True, "1 logs every step"),
    "train.save_every": (0, True, None, True, "0 saves only at the end"),
    "train.eval_every": (0, True, None, True, "0 evaluates only at the end"),
    "train.keep_last": (0, True, None, True, "0 keeps every checkpoint"),
    "train.z_loss": (0.0, True, None, True, "0 disables it"),
    "train.early_stop_min_delta": (0.0, True, None, True, "0: any improvement counts"),
}


def _check_numbers(cfg: Config) -> None:
    """Each number of `_RANGES` inside its range (and not NaN): ConfigError naming the key,
    the range and a valid value."""
    for key, (lo, lo_in, hi, hi_in, hint) in _RANGES.items():
        v = _get(cfg, key)
        ok = (v >= lo if lo_in else v > lo) and (hi is None or (v <= hi if hi_in else v < hi))
        if not ok:
            left, right = "[" if lo_in else "(", "]" if hi_in else ")"
            span = f"{left}{lo}, {hi}{right}" if hi is not None else (f">= {lo}" if lo_in else f"> {lo}")
            raise ConfigError(f"{key}={v} is out of range: must be {span} ({hint})")


LOGGERS = ("jsonl", "tensorboard", "wandb")


def _check_loggers(names: list[str]) -> None:
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"train.loggers: unknown logger {unknown[0]!r} (have {', '.join(LOGGERS)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"train.loggers lists a logger twice: {names}")
    if "jsonl" not in names:
        raise ConfigError("train.loggers must include jsonl: metrics.jsonl is what resume, pipelines, "
                          "`llmcore plot` and the model card read")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


