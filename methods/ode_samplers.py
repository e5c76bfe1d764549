"""Higher-order and adaptive ODE samplers for the Gaussian-path methods (``purr``, ``cfm``, ``cfm-endpoint``).

All three integrate the probability-flow ODE dz/dt = v(z, t) from the source z_0 at t = 0 to
t = 1, then round z to the nearest code per position (the method's ``final_codes``). The velocity
comes from one guided network evaluation (``GaussianPathMethod.predict``) through
``GaussianPathMethod.velocity``: the network output itself (``cfm``) or
v = (x_hat(z, t) - z) / (1 - t) from an endpoint x_hat, the posterior mean of the codebook
(``purr``) or the regressed endpoint (``cfm-endpoint``).

The t = 1 singularity: for the endpoint methods v divides by 1 - t, so no stage of any solver here
evaluates the network at t = 1. Each solver's last move is one that needs no evaluation there:

* ``heun``: the last step (t_{N-1} -> 1) is an Euler step, for the endpoint methods the closed-form
  jump onto x_hat(z, t_{N-1});
* ``midpoint``: every step evaluates at t_i and t_i + h/2, the last step at 1 - h/2;
* ``dopri5``: integrates to 1 - delta (delta = 1e-3), then takes the Euler step from there to 1
  (the jump onto x_hat(z, 1 - delta) for the endpoint methods).

Temperature, guidance, the source noise (from ``ctx.noise``) and the final rounding are the
method's, exactly as under ``euler``; for ``purr``'s ``argmax`` / ``sample`` final rules the last
network evaluation is the final prediction that reads the codes out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from methods.gaussian_path import GaussianPathMethod, PathState
from methods.sampling import SampleContext, Sampler, Solution, register_sampler


@register_sampler
class Heun(Sampler):
    """Heun's method (explicit trapezoid, 2nd order) on the uniform grid t_i = i / N, h = t_{i+1} - t_i:

        k1 = v(z, t_i),  z' = z + h k1,  k2 = v(z', t_{i+1}),  z <- z + (h / 2) (k1 + k2)

    for i < N - 1; the last step (t_{i+1} = 1, where v may be singular) is the method's Euler step,
    for ``purr`` and ``cfm-endpoint`` the jump onto x_hat(z, t_{N-1}). NFE per step: 2, the last
    one 1, so NFE = (2N - 1) x passes_per_step(w). The trace is that of the first evaluation of each
    step (at t_i).
    """

    name = "heun"

    def evaluations(self, steps: int) -> int:
        return 2 * steps - 1

    def step(
        self, method: GaussianPathMethod, ctx: SampleContext, state: PathState, t: float, t_next: float
    ) -> tuple[PathState, dict[str, Tensor]]:
        if t_next == 1.0:
            return method.euler_step(ctx, state, t, t_next)
        h, z = t_next - t, state.z
        first = method.predict(ctx, z, t)
        k1 = method.velocity(z, first.out, t)
        z_euler = z + h * k1
        k2 = method.velocity(z_euler, method.predict(ctx, z_euler, t_next).out, t_next)
        return PathState(z + (0.5 * h) * (k1 + k2)), first.trace


@register_sampler
class Midpoint(Sampler):
    """The explicit midpoint method (2nd order) on the uniform grid t_i = i / N, h = t_{i+1} - t_i:

        z_m = z + (h / 2) v(z, t_i),  z <- z + h v(z_m, t_i + h / 2)

    on every step, the last included: it evaluates at 1 - h/2, never at t = 1 (so for the endpoint
    methods it does not land exactly on a prediction; the codes are the nearest to the final z).
    NFE per step: 2, so NFE = 2N x passes_per_step(w). The trace is that of the first evaluation of
    each step (at t_i).
    """

    name = "midpoint"

    def evaluations(self, steps: int) -> int:
        return 2 * steps

    def step(
        self, method: GaussianPathMethod, ctx: SampleContext, state: PathState, t: float, t_next: float
    ) -> tuple[PathState, dict[str, Tensor]]:
        h, z = t_next - t, state.z
        t_mid = t + 0.5 * h
        first = method.predict(ctx, z, t)
        z_mid = z + (0.5 * h) * method.velocity(z, first.out, t)
        second = method.predict(ctx, z_mid, t_mid, final=t_next == 1.0)
        return PathState(z + h * method.velocity(z_mid, second.out, t_mid), second.codes), first.trace


@register_sampler
class Dopri5(Sampler):
    """Adaptive Dormand-Prince 5(4) (``torchdiffeq``'s ``dopri5``) with tolerances ``rtol``, ``atol``.

    Integrates dz/dt = v(z, t) from 0 to 1 - delta (delta = ``END_GAP`` = 1e-3; every step is
    clipped to end there, so no stage evaluates beyond it), then takes the method's Euler step from
    1 - delta to 1: for ``purr`` and ``cfm-endpoint`` the jump onto x_hat(z, 1 - delta), for ``cfm``
    z + delta v. The step-size controller accepts a step when the RMS over the *whole batch's* state
    of err / (atol + rtol max(|z|, |z'|)) is at most 1, so the steps, and therefore each sample,
    depend on the batch (``batch_independent = False``).

    ``steps`` is ignored (the tolerances set the cost). NFE is counted, not assumed: every velocity
    evaluation the solver asks for (the first derivative, one probe for the initial step size, 6 per
    attempted step with first-same-as-last reuse, rejected attempts included) plus the final Euler
    evaluation, x passes_per_step(w). The trace has one entry per evaluation, at its time, in the
    order they were made.
    """

    name = "dopri5"
    adaptive = True
    batch_independent = False
    END_GAP = 1e-3
    """delta: the solver stops at 1 - delta, where v = (x_hat - z) / (1 - t) is still finite."""

    def __init__(self, *, rtol: float = 1e-3, atol: float = 1e-3):
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"sampler 'dopri5': rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
        self.rtol, self.atol = float(rtol), float(atol)

    def evaluations(self, steps: int) -> None:
        return None

    def step(self, method: Any, ctx: SampleContext, state: Any, t: float, t_next: float) -> Any:
        raise NotImplementedError("dopri5 chooses its own steps: see solve")

    def solve(self, method: GaussianPathMethod, ctx: SampleContext, state: PathState, steps: int) -> Solution:
        from torchdiffeq import odeint  # a dependency of the suite, imported only where it is used

        end = 1.0 - self.END_GAP
        times: list[float] = []
        values: dict[str, list[Tensor]] = {}

        def record(t: float, trace: dict[str, Tensor]) -> None:
            times.append(t)
            for key, value in trace.items():
                values.setdefault(key, []).append(value)

        def velocity(t: Tensor, z: Tensor) -> Tensor:  # counts every evaluation the solver makes
            time = float(t)
            if not time < 1.0:
                raise RuntimeError(f"sampler 'dopri5': the solver asked for the velocity at t = {time} >= 1")
            pred = method.predict(ctx, z, time)
            record(time, pred.trace)
            return method.velocity(z, pred.out, time)

        span = torch.tensor([0.0, end], dtype=torch.float64, device=ctx.device)
        z = odeint(
            velocity, state.z, span, rtol=self.rtol, atol=self.atol, method="dopri5", options={"step_t": span[1:]}
        )[-1]
        state, trace = method.euler_step(ctx, PathState(z), end, 1.0)
        record(end, trace)
        return Solution(state, len(times), {"t": times, **{k: torch.stack(v).tolist() for k, v in values.items()}})
