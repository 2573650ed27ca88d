"""The per-frame diffusion loop without a scheduler object in it.

DPM-Solver++ (multistep, order 1 or 2) updates are linear in the sample and the data predictions,
so every coefficient ``scheduler.step`` would compute is computed once per ``steps`` setting, with
the scheduler's own float32 scalar arithmetic, and the loop applies them in the same order and
dtypes as ``diffusers.DPMSolverMultistepScheduler.step``. ``build_plan`` checks its table against
the real scheduler and refuses configurations it does not cover.

The adaLN modulation of every step is one matmul per layer per frame (the condition is fixed within
a frame and the timestep embeddings are fixed per ``steps``), instead of one per step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import EngineError


@dataclass(frozen=True)
class SolverStep:
    """Coefficients of one step, as float32 0-dim CPU tensors like the scheduler's own scalars: a
    python float would round differently against a bfloat16 tensor."""

    timestep: int
    alpha: torch.Tensor  # data prediction from the model output: see ``_to_data``
    sigma: torch.Tensor
    order: int  # 1 or 2
    sample_coef: torch.Tensor  # x_next = sample_coef * x - first_coef * D0 -/+ second_coef * D1
    first_coef: torch.Tensor
    second_coef: torch.Tensor
    heun: bool  # sign of the D1 term: + for heun, - for midpoint
    ratio_inv: torch.Tensor  # D1 = ratio_inv * (m0 - m1)


@dataclass(frozen=True)
class SolverPlan:
    steps: tuple[SolverStep, ...]
    prediction_type: str


def build_plan(scheduler, num_steps: int) -> SolverPlan:
    """Precompute the DPM-Solver++ coefficients of ``num_steps`` steps from ``scheduler``'s config."""
    sched = copy.deepcopy(scheduler)
    config = sched.config
    name = type(sched).__name__
    supported = (
        name == "DPMSolverMultistepScheduler"
        and config.algorithm_type == "dpmsolver++"
        and config.solver_order in (1, 2)
        and config.solver_type in ("midpoint", "heun")
        and config.prediction_type in ("v_prediction", "epsilon", "sample")
        and not config.thresholding
        and config.variance_type is None
    )
    if not supported:
        raise EngineError(
            f"the fast engine supports DPMSolverMultistepScheduler (dpmsolver++, order <= 2, no thresholding); "
            f"the checkpoint asks for {name} {dict(config)}"
        )
    sched.set_timesteps(num_inference_steps=num_steps)
    count = len(sched.timesteps)
    if sched.index_for_timestep(sched.timesteps[0]) != 0:
        raise EngineError("the scheduler's timesteps repeat their first value; not supported by the fast engine")
    sigmas = sched.sigmas
    to_alpha_sigma = sched._sigma_to_alpha_sigma_t
    steps = []
    lower_order_nums = 0
    for index in range(count):
        lower_order_final = index == count - 1 and (
            config.euler_at_final or (config.lower_order_final and count < 15) or config.final_sigmas_type == "zero"
        )
        alpha_s0, sigma_s0 = to_alpha_sigma(sigmas[index])
        alpha_t, sigma_t = to_alpha_sigma(sigmas[index + 1])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = lambda_t - lambda_s0
        sample_coef = sigma_t / sigma_s0
        first_coef = alpha_t * (torch.exp(-h) - 1.0)
        order = 1 if config.solver_order == 1 or lower_order_nums < 1 or lower_order_final else 2
        second_coef = ratio_inv = torch.zeros(())
        heun = config.solver_type == "heun"
        if order == 2:
            alpha_s1, sigma_s1 = to_alpha_sigma(sigmas[index - 1])
            lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
            ratio_inv = 1.0 / ((lambda_s0 - lambda_s1) / h)
            if heun:
                second_coef = alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
            else:
                second_coef = 0.5 * (alpha_t * (torch.exp(-h) - 1.0))
        steps.append(
            SolverStep(
                timestep=int(sched.timesteps[index]),
                alpha=alpha_s0,
                sigma=sigma_s0,
                order=order,
                sample_coef=sample_coef,
                first_coef=first_coef,
                second_coef=second_coef,
                heun=heun,
                ratio_inv=ratio_inv,
            )
        )
        lower_order_nums = min(lower_order_nums + 1, config.solver_order)
    plan = SolverPlan(steps=tuple(steps), prediction_type=config.prediction_type)
    _check_against_scheduler(plan, scheduler, num_steps)
    return plan


def _to_data(step: SolverStep, prediction_type: str, sample: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The scheduler's ``convert_model_output`` for dpmsolver++ (same ops, same dtypes)."""
    if prediction_type == "v_prediction":
        return step.alpha * sample - step.sigma * output
    if prediction_type == "epsilon":
        return (sample - step.sigma * output) / step.alpha
    return output


def solver_update(
    plan: SolverPlan, index: int, sample: torch.Tensor, output: torch.Tensor, previous: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``scheduler.step``: returns (next sample in the output's dtype, this step's data prediction)."""
    step = plan.steps[index]
    data = _to_data(step, plan.prediction_type, sample, output)
    wide = sample.to(torch.float32)
    result = step.sample_coef * wide - step.first_coef * data
    if step.order == 2:
        slope = step.ratio_inv * (data - previous)
        term = step.second_coef * slope
        result = result + term if step.heun else result - term
    return result.to(output.dtype), data


def _check_against_scheduler(plan: SolverPlan, scheduler, num_steps: int) -> None:
    """Run the real scheduler and our table on the same random inputs; refuse a mismatch."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_inference_steps=num_steps)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 16, generator=generator)
    ours = sample.clone()
    previous = None
    for index, timestep in enumerate(sched.timesteps):
        output = torch.randn(2, 16, generator=generator)
        sample = sched.step(output, timestep, sample).prev_sample
        ours, previous = solver_update(plan, index, ours, output, previous)
    if not torch.allclose(sample, ours, rtol=1e-5, atol=1e-6):
        raise EngineError(
            f"precomputed DPM-Solver coefficients differ from the scheduler by {(sample - ours).abs().max():.3g}"
        )


class DiffusionSampler:
    """Runs ``model.model.diffusion_head`` for one frame: CFG-guided DPM-Solver++ from given noise."""

    def __init__(self, model, scheduler):
        self.head = model.model.diffusion_head
        self.scheduler = scheduler
        self.plans: dict[int, SolverPlan] = {}
        self.timestep_embeds: dict[int, torch.Tensor] = {}

    def prepare(self, num_steps: int, dtype: torch.dtype, device: torch.device) -> SolverPlan:
        """Plan and timestep embeddings (num_steps, 2, hidden) for ``num_steps``, cached."""
        if num_steps not in self.plans:
            plan = build_plan(self.scheduler, num_steps)
            timesteps = torch.tensor([step.timestep for step in plan.steps], device=device)
            flat = timesteps.repeat_interleave(2).to(dtype)  # what the stock loop feeds: timestep.repeat(2)
            embedded = self.head.timestep_embedding(flat).to(dtype)
            self.timestep_embeds[num_steps] = self.head.timestep_proj(embedded).view(len(plan.steps), 2, -1)
            self.plans[num_steps] = plan
        return self.plans[num_steps]

    def sample(
        self,
        positive: torch.Tensor,
        negative: torch.Tensor,
        noise: torch.Tensor,
        cfg_scale: torch.Tensor,
        num_steps: int,
    ) -> torch.Tensor:
        """Latents (n, latent) for n requests: conditions (n, hidden) each, ``noise`` (n, latent) in the
        model dtype (row 0 of each request's ``randn(2, latent)`` draw), ``cfg_scale`` (n, 1) float32.

        Row 0 of the draw is all that matters: the stock loop feeds it to both CFG halves and returns
        it, and every solver operation is elementwise, so row 1 never influences it. Each request's
        rows are independent of the others' (row-wise ops only).
        """
        head = self.head
        count = positive.shape[0]
        plan = self.prepare(num_steps, positive.dtype, positive.device)
        condition = head.cond_proj(torch.cat([positive, negative], dim=0))  # (2n, hidden): cond rows, then uncond
        conditions = condition.unsqueeze(0) + self.timestep_embeds[num_steps][:, :1]  # (steps, 2n, hidden)
        layer_mods = [layer.linear(layer.act_fn(conditions)).chunk(layer.num_chunks, dim=-1) for layer in head.layers]
        final = head.final_layer
        final_mods = final.linear_1(final.act_fn(conditions)).chunk(final.num_chunks, dim=-1)
        latent = noise
        previous = None
        for index in range(len(plan.steps)):
            hidden = head.noisy_images_proj(torch.cat([latent, latent], dim=0))
            for layer, (shift, scale, gate) in zip(head.layers, layer_mods, strict=True):
                modulated = layer.norm(hidden) * (1 + scale[index]) + shift[index]
                hidden = hidden + gate[index] * layer.ffn(modulated)
            shift, scale = final_mods[0][index], final_mods[1][index]
            normed = F.rms_norm(hidden, (hidden.shape[-1],), eps=final.rms_norm_eps)
            output = final.linear_2(normed * (1 + scale) + shift)
            cond_out, uncond_out = output[:count], output[count:]
            guided = (uncond_out + cfg_scale * (cond_out - uncond_out)).to(output.dtype)
            latent, previous = solver_update(plan, index, latent, guided, previous)
        return latent
