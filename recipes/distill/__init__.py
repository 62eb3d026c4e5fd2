"""`distill`: distilled pretraining -- next-token CE plus KD from a frozen teacher, online or cached.

Paper: "Distilled Pretraining: A modern lens of Data, In-Context Learning and Test-Time
Scaling" (arXiv 2509.01649); sparse caches after the design-space study of arXiv 2410.16215;
random-sampled KD after Anshumann et al. (arXiv 2503.16870). Per token that takes a loss:

    (1 - alpha) * CE(y, softmax(z)) + alpha * T^2 * KL(q_T || softmax(z / T))

replacing llmcore's `ntp` term (`replaces_ntp`) and computed in one fused pass over the
vocabulary (`kernels.linear_distill_loss`): the student's log-probs always over its full
vocabulary, never a [tokens, vocab] tensor. Normalised as every `ntp` term: the step's sum
over all micro-batches and ranks divided once by its count of loss tokens.

Teacher (`teacher`): an llmcore checkpoint / run dir, or a Hugging Face Llama folder (converted
by `import_hf`), frozen and placed by the engine (a whole replica on every rank, ZeRO-3 too);
the student's output weight is gathered for the whole loss by the engine (it is an external
parameter of the train module). Targets (`targets`) from the online teacher or from an offline
cache (`cache`, written by `llmcore distill cache`, see `recipes.distill.cache`):
- `topk` (default): the teacher's k most likely ids, q_T = softmax(log p / T) over them;
- `top_p_topk`: the shortest prefix of those k with mass >= top_p, renormalised the same way;
- `sampled`: the empirical distribution of n draws from q_T (unbiased: E[gradient] = full KD's);
- `dense` (online teacher only): the full distribution, teacher logits chunked in the kernel.
Routing (`route_fraction`, `recipes.distill.routing`): no KD on the lowest-teacher-entropy
positions, a quantile per training window (why not per micro-batch / global batch: there).

Choices the papers leave open, made here:
- alpha and T each constant, linear (start -> end over max_steps) or following the LR
  multiplier (`recipes.distill.schedule`); T applies to the KD term only, the CE term is at T = 1.
- Top-k / top-p are chosen on the teacher's T = 1 distribution; T is applied after, to the kept
  log-probs, and the kept set is renormalised (the student is not: full vocabulary). The
  cached log-probs are normalised over the whole vocabulary, so the covered mass is logged.
- Sampled KD: proposal = the teacher at T itself (importance weight 1 per draw, target =
  count / n over distinct ids); a cache's draws are made at one T, so a sampled cache needs
  `temperature` equal to it, constant. Online draws use a generator seeded by (train.seed,
  step, micro-batch, rank). The logged soft loss is KL(empirical || student): its gradient
  is unbiased, its value is not the full KL.
- Reverse KL (`reverse`): dense teacher only (KL(s || q) is infinite outside a sparse support).
- Positions without a next-token loss (label -100, ignored ids such as pauses) get neither
  term; a position without a teacher target (the stream's first token in a cache, a token a
  transform inserted) gets (1 - alpha) x CE. "Drop the KD term" is read as "train the position
  as plain pretraining": a routed position gets CE with weight 1 (`routed_ce: full`, default;
  with alpha = 0.9, (1 - alpha) x CE alone would all but drop the position), or the literal
  (1 - alpha) x CE (`routed_ce: mixed`).
- Routing ranks by the teacher's entropy at T = 1 (the cache stores it so; the online teacher
  computes it per row chunk), per window, floor(route_fraction x scored positions).
- Vocabularies: the teacher must carry the student's tokenizer; output widths that differ by
  padding are sliced to the tokenizer's real vocabulary (dense), and sparse ids are always
  real ids (`recipes.distill.teacher`).
- The online teacher reads the same window as the student (same context); a cache's context
  is its own windows (`recipes.distill.cache`).
- alpha = 0 at a step: the term is exactly llmcore's own next-token CE (same kernel call, the
  teacher not run): bit-identical training (a test). alpha = 0 throughout: the teacher is
  still loaded and checked, never run.

Logged per step (`on_step_end`, all ranks): `distill/hard` (CE per loss token), `distill/soft`
(KL per KD position), `distill/routed` (fraction of loss positions without KD),
`distill/topk_mass` (teacher mass the sparse target covers, before renormalising),
`distill/teacher_entropy` (nats, mean over loss positions), `distill/alpha`, `distill/temperature`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from llmcore.errors import ConfigError
from recipes.base import LossContext, Recipe, RunContext, register
from recipes.distill import schedule
from recipes.distill.routing import route_mask
from recipes.distill.targets import (
    TARGETS,
    counted_targets,
    sampled_targets,
    teacher_samples,
    teacher_topk,
    topk_mass,
    topk_targets,
)

TEACHER = "distill_teacher"
"""The frozen module's name (`ctx.frozen[TEACHER]`)."""

# hard sum, soft sum, loss tokens, KD positions, routed, covered-mass sum, its rows, entropy sum, its rows
_N_STATS = 9


@register("distill")
class Distill(Recipe):
    """Distilled pretraining (see the module docstring)."""

    replaces_ntp = True

    @dataclass
    class Config:
        teacher: str = ""
        """Checkpoint / run dir / HF Llama folder of the teacher. Needed online; with `cache`,
        optional: then checked against the teacher the cache was made from."""
        cache: str = ""
        """Name of an offline cache in the data folder ("" = online teacher); the run's
        data.sidecars must list its side-cars (top-k: C_ids, C_logp, C_lse, C_entropy;
        sampled: C_n, C_ids, C_count, C_lse, C_entropy)."""
        alpha: float = 0.5
        """Weight of the KD term in [0, 1] (the paper: 0.5 or 0.9); 0 = plain training."""
        alpha_end: float | None = None
        """alpha at the end of a linear / lr schedule (None: constant)."""
        alpha_schedule: str = "constant"
        """constant | linear | lr (follows the LR multiplier)."""
        temperature: float = 1.0
        """KD temperature T > 0 (both distributions at T, the term times T^2)."""
        temperature_end: float | None = None
        temperature_schedule: str = "constant"
        reverse: bool = False
        """KL(student || teacher) instead of KL(teacher || student); dense targets only."""
        targets: str = "topk"
        """topk | top_p_topk | sampled | dense (online only)."""
        top_k: int = 32
        """Ids per position for topk / top_p_topk (a cache's k or fewer)."""
        top_p: float = 0.95
        """Mass of the top_p_topk prefix."""
        samples: int = 24
        """Draws per position for online sampled targets (a cache has its own n)."""
        route_fraction: float = 0.15
        """Fraction of each window's loss positions, lowest teacher entropy first, without KD; 0 = off."""
        routed_ce: str = "full"
        """The CE weight of a routed position: full (1, plain pretraining there) | mixed (1 - alpha)."""
        block_rows: int = 1024
        """Rows of teacher logits built at once for online sparse targets."""

    def __init__(self, config=None):
        super().__init__(config or self.Config())
        c = self.config
        for key, v in (("alpha", c.alpha), ("alpha_end", c.alpha_end)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"distill.{key}={v} must be in [0, 1]")
        for key, v in (("temperature", c.temperature), ("temperature_end", c.temperature_end)):
            if v is not None and not v > 0:
                raise ConfigError(f"distill.{key}={v} must be > 0")
        schedule.check(c.alpha_schedule, "distill.alpha_schedule")
        schedule.check(c.temperature_schedule, "distill.temperature_schedule")
        if c.targets not in TARGETS:
            raise ConfigError(f"distill.targets={c.targets!r} is not one of {', '.join(TARGETS)}")
        if c.targets == "dense" and c.cache:
            raise ConfigError("distill.targets=dense needs the online teacher; a cache holds sparse targets "
                              "(targets: topk, top_p_topk or sampled)")
        if c.reverse and c.targets != "dense":
            raise ConfigError(f"distill.reverse=true needs distill.targets=dense (got {c.targets!r}): the reverse "
                              "KL to a sparse target is infinite outside its support")
        if c.routed_ce not in ("full", "mixed"):
            raise ConfigError(f"distill.routed_ce={c.routed_ce!r} is not one of full, mixed")
        if not 0.0 <= c.route_fraction < 1.0:
            raise ConfigError(f"distill.route_fraction={c.route_fraction} must be in [0, 1)")
        if not 0.0 < c.top_p <= 1.0:
            raise ConfigError(f"distill.top_p={c.top_p} must be in (0, 1]")
        if c.top_k < 1 or c.samples < 1:
            raise ConfigError(f"distill.top_k={c.top_k} and distill.samples={c.samples} must be >= 1")
        if not c.cache and not c.teacher:
            raise ConfigError("distill needs distill.teacher (online) or distill.cache (offline)")
        self.tokenizer = None
        self.kd_vocab = None  # rows of both output weights the dense KD term compares
        self.real_vocab = None
        self.cache_info: dict = {}
        self.cache_layout = ""  # topk | counts | draws (recipes.distill.cache.layout_of)
        self._run: dict | None = None  # max_steps, schedule config, z_loss, seed: from on_train_start
        self._stats = None
        self._micro = 0
        self._last = (self.config.alpha, self.config.temperature)  # alpha, T of the latest loss call

    # --- set-up -----------------------------------------------------------------------------
    def bind(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.real_vocab = tokenizer.vocab_size

    def frozen_modules(self, model_args) -> dict:
        """The teacher (online only: a cached run needs none placed), after its vocabulary check."""
        c = self.config
        if c.cache:
            return {}
        from recipes.distill.teacher import check_vocab, load_teacher

        model, tok = load_teacher(c.teacher)
        self.kd_vocab = check_vocab(self.tokenizer, tok, model_args.vocab_size, model.args.vocab_size,
                                    "distill.teacher")
        return {TEACHER: model}

    def uses_max_steps(self) -> bool:
        # linear runs start -> end over max_steps; lr follows the LR schedule, which may too
        c = self.config
        return c.alpha_schedule != "constant" or c.temperature_schedule != "constant"

    def on_train_start(self, ctx: RunContext) -> dict:
        cfg = ctx.config
        c = self.config
        if cfg.train.ntp_weight != 1.0:
            raise ConfigError(f"train.ntp_weight={cfg.train.ntp_weight} with recipe distill, which owns the next-token "
                              "term: weight it with distill.alpha")
        self._run = {"max_steps": cfg.train.max_steps, "schedule": cfg.schedule, "z_loss": cfg.train.z_loss,
                     "seed": cfg.train.seed, "rank": ctx.rank}
        if c.cache:
            self._check_cache(cfg)
        return {}

    def _check_cache(self, cfg) -> None:
        from recipes.distill.cache import check_cache, layout_of, sidecar_names
        from recipes.distill.teacher import teacher_identity

        c = self.config
        paths = [s.path for s in cfg.data.sources] or [cfg.data.path]
        identity = teacher_identity(c.teacher) if c.teacher else None  # hashed once, not per source
        infos = [check_cache(p, c.cache, c.teacher or None, identity) for p in paths]
        info = infos[0]
        sampled = info.get("mode") == "sampled"
        layouts = {p: layout_of(i) for p, i in zip(paths, infos)}
        if len(set(layouts.values())) > 1:
            raise ConfigError(f"distill.cache={c.cache!r} has different layouts in the data sources ({layouts}): "
                              "rewrite the older ones with `llmcore distill cache --overwrite`")
        self.cache_layout = layouts[paths[0]]
        need = sidecar_names(c.cache, self.cache_layout)
        missing = [n for n in need if n not in cfg.data.sidecars]
        if missing:
            raise ConfigError(f"distill.cache={c.cache!r} needs data.sidecars to list {need} (missing {missing})")
        if sampled != (c.targets == "sampled"):
            raise ConfigError(f"distill.cache={c.cache!r} is a {info.get('mode')} cache, distill.targets is "
                              f"{c.targets!r}: a top-k cache serves topk / top_p_topk, a sampled one sampled")
        if sampled and (c.temperature_schedule != "constant" or abs(c.temperature - info["temperature"]) > 1e-12):
            raise ConfigError(f"distill.cache={c.cache!r} holds draws at temperature {info['temperature']}; "
                              f"distill.temperature={c.temperature} ({c.temperature_schedule}) must equal it, constant")
        if info.get("vocab") != self.real_vocab:
            raise ConfigError(f"distill.cache={c.cache!r} was made over a vocabulary of {info.get('vocab')} ids, the "
                              f"run's tokenizer has {self.real_vocab}")
        if not sampled and c.top_k > info.get("width", 0):
            raise ConfigError(f"distill.top_k={c.top_k} exceeds the cache's k={info.get('width')}")
        self.cache_info = info

    # --- the term -----------------------------------------------------------------------------
    def alpha(self, step: int) -> float:
        c, r = self.config, self._need_run()
        return schedule.value(c.alpha_schedule, c.alpha, c.alpha_end, step, r["max_steps"], r["schedule"])

    def temperature(self, step: int) -> float:
        c, r = self.config, self._need_run()
        return schedule.value(c.temperature_schedule, c.temperature, c.temperature_end, step, r["max_steps"],
                              r["schedule"])

    def _need_run(self) -> dict:
        if self._run is None:
            raise RuntimeError("distill: the loss ran before on_train_start (the trainer calls it first)")
        return self._run

    def loss(self, ctx: LossContext) -> dict:
        alpha, T = self.alpha(ctx.step), self.temperature(ctx.step)
        z_loss = self._run["z_loss"]
        h = ctx.hidden.reshape(-1, ctx.hidden.shape[-1])
        labels = ctx.batch["labels"].reshape(-1)
        count = ctx.batch["n_loss_tokens"]
        if alpha == 0:
            # llmcore's own next-token term, call for call (llmcore.train.losses.ntp_loss)
            ce = kernels.linear_cross_entropy(h, ctx.output_weight, labels, ignore_index=-100,
                                              ignore_ids=ctx.ignore_ids, z_loss=z_loss, reduction="sum")
            self._add_stats(hard=ce.detach(), n=count, alpha=0.0, T=T)
            return {"ntp": (ce, count)}
        B, S = ctx.batch["labels"].shape
        keep = kernels.loss_target_mask(labels, ignore_ids=ctx.ignore_ids)
        teacher, entropy, mass, has_target = self._teacher(ctx, T)
        kd = keep & has_target
        routed = torch.zeros_like(kd)
        if self.config.route_fraction > 0:
            ent = torch.where(torch.isfinite(entropy), entropy, torch.full_like(entropy, float("inf")))
            routed = route_mask(ent.view(B, S), kd.view(B, S), self.config.route_fraction).reshape(-1)
        kd_weight = (kd & ~routed).to(torch.float32)
        ce_weight = None
        if self.config.routed_ce == "full" and self.config.route_fraction > 0:
            # a routed position is trained as in plain pretraining: its CE weight back to 1
            ce_weight = torch.where(routed, 1.0, 1.0 - alpha).to(torch.float32)
        w = ctx.output_weight
        if "teacher_h" in teacher and self.kd_vocab != w.shape[0]:
            w = w[: self.kd_vocab]  # padded widths differ: compare over the real vocabulary only
        res = kernels.linear_distill_loss(h, w, labels, **teacher, alpha=alpha, temperature=T, kd_weight=kd_weight,
                                          ce_weight=ce_weight, reverse=self.config.reverse,
                                          ignore_ids=ctx.ignore_ids, reduction="sum", z_loss=z_loss)
        loss = res.loss
        routed = routed & keep
        ent_ok = keep & torch.isfinite(entropy)
        self._add_stats(hard=res.hard, soft=res.soft, n=count, kd=kd_weight.sum(), routed=routed.sum(),
                        mass=(mass * kd).sum() if mass is not None else None, mass_rows=kd.sum(),
                        ent=torch.where(ent_ok, entropy, torch.zeros_like(entropy)).sum(), ent_rows=ent_ok.sum(),
                        alpha=alpha, T=T)
        return {"ntp": (loss, count)}

    def _teacher(self, ctx: LossContext, T: float):
        """(kernel teacher kwargs, entropy [N] (NaN: unknown), covered mass [N] or None,
        has_target [N] bool) for this micro-batch."""
        c = self.config
        if c.cache:
            return self._cached(ctx, T)
        teacher = ctx.frozen[TEACHER]
        with torch.no_grad():
            th = teacher(ctx.batch["input_ids"], ctx.batch.get("doc_ids"))
            th = th.reshape(-1, th.shape[-1])
        tw = teacher.output_weight.detach()
        n = th.shape[0]
        ok = torch.ones(n, dtype=torch.bool, device=th.device)
        if c.targets == "dense":
            entropy, _ = kernels.teacher_entropy(th, tw[: self.kd_vocab])
            return {"teacher_h": th, "teacher_w": tw[: self.kd_vocab]}, entropy.float(), None, ok
        tw = tw[: self.real_vocab]
        if c.targets == "sampled":
            gen = torch.Generator(device=th.device).manual_seed(
                hash((self._run["seed"], ctx.step, self._micro, self._run["rank"])) % (1 << 62))
            self._micro += 1
            got = teacher_samples(th, tw, c.samples, T, gen, c.block_rows)
            ids, logq = sampled_targets(got["ids"])
            return {"teacher_ids": ids, "teacher_logprobs": logq}, got["entropy"], None, ok
        got = teacher_topk(th, tw, c.top_k, c.block_rows)
        ids, logq = topk_targets(got["ids"], got["logp"], T, c.top_p if c.targets == "top_p_topk" else None)
        return {"teacher_ids": ids, "teacher_logprobs": logq}, got["entropy"], topk_mass(got["logp"]), ok

    def _cached(self, ctx: LossContext, T: float):
        c, b = self.config, ctx.batch
        entropy = b[f"{c.cache}_entropy"].reshape(-1).float()
        ok = torch.isfinite(entropy)
        ids = b[f"{c.cache}_ids"]
        ids = ids.reshape(-1, ids.shape[-1]).long()
        if c.targets == "sampled":
            if self.cache_layout == "counts":
                counts = b[f"{c.cache}_count"]
                tid, logq = counted_targets(ids, counts.reshape(-1, counts.shape[-1]), b[f"{c.cache}_n"].reshape(-1))
            else:  # the first layout: the draws themselves
                tid, logq = sampled_targets(ids)
            logq = torch.where(ok[:, None], logq, torch.full_like(logq, float("-inf")))
            return {"teacher_ids": tid, "teacher_logprobs": logq}, entropy, None, ok
        logp = b[f"{c.cache}_logp"]
        logp = logp.reshape(-1, logp.shape[-1]).float()
        ok = ok & torch.isfinite(logp[:, 0])
        tid, logq = topk_targets(ids, logp, T, c.top_p if c.targets == "top_p_topk" else None, c.top_k)
        return {"teacher_ids": tid, "teacher_logprobs": logq}, entropy, topk_mass(logp[:, : c.top_k]), ok

    # --- logging --------------------------------------------------------------------------------
    def _add_stats(self, *, hard, n, soft=0.0, kd=0.0, routed=0.0, mass=None, mass_rows=0.0, ent=0.0,
                   ent_rows=0.0, alpha=0.0, T=1.0) -> None:
        vals = [hard, soft, n, kd, routed, 0.0 if mass is None else mass, 0.0 if mass is None else mass_rows,
                ent, ent_rows]
        device = next((v.device for v in vals if torch.is_tensor(v)), None)
        # stacked where the values live: no host sync per micro-batch (on_step_end reads them once)
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in vals])
        self._stats = t if self._stats is None else self._stats + t
        self._last = (alpha, T)

    def on_step_end(self, ctx: RunContext, metrics: dict) -> dict:
        """The step's distillation metrics, summed over micro-batches and ranks (a collective)."""
        self._micro = 0
        t = self._stats if self._stats is not None else torch.zeros(_N_STATS, dtype=torch.float64)
        self._stats = None
        t = ctx.engine.all_reduce_sum(t.to(ctx.device))
        hard, soft, n, kd, routed, mass, mass_rows, ent, ent_rows = (float(x) for x in t)
        alpha, T = self._last
        out = {"distill/hard": hard / max(1.0, n), "distill/routed": routed / max(1.0, n),
               "distill/alpha": alpha, "distill/temperature": T}
        if kd > 0:
            out["distill/soft"] = soft / kd
        if ent_rows > 0:
            out["distill/teacher_entropy"] = ent / ent_rows
        if mass_rows > 0:  # top-k targets (dense and sampled ones cover the whole distribution)
            out["distill/topk_mass"] = mass / mass_rows
        return out


def add_command(parser) -> None:
    """distill: write an offline teacher cache (`llmcore distill cache --teacher T --data D --out C`)."""
    from recipes.distill.command import add_cache_command

    add_cache_command(parser)
