"""A simulated environment stepping at a fixed rate while the model works in the background.

The loop never waits on the model: each tick it steps the environment, collects whatever policy outputs have
finished (`BackgroundLLM.poll()`, which returns at once), and keeps `--in-flight` requests submitted. It reports
environment steps/s with the model idle and with the model busy (the loop should not slow down), tick jitter,
and the engine's output tokens/s over the busy phase.

    python examples/sim_env_rollouts.py                      # default model, 2 s per phase
    python examples/sim_env_rollouts.py --rate 200 --in-flight 16 --seconds 5
"""

from __future__ import annotations

import argparse
import math
import random
import time

from plait import BackgroundLLM, SamplingParams


class CartSim:
    """A toy physics environment: a few hundred floating-point operations per step, like a cheap simulator."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.x, self.v, self.theta, self.omega = 0.0, 0.0, 0.05, 0.0

    def step(self, force: float) -> list[float]:
        for _ in range(20):  # sub-steps of a semi-implicit Euler integrator
            acc = force - 0.1 * self.v + 9.8 * math.sin(self.theta) * 0.05
            self.v += 0.001 * acc
            self.x += 0.001 * self.v
            self.omega += 0.001 * (9.8 * math.sin(self.theta) - acc * math.cos(self.theta))
            self.theta += 0.001 * self.omega
        return [self.x, self.v, self.theta, self.omega]


def run_phase(engine: BackgroundLLM | None, sim: CartSim, rate: float, seconds: float, in_flight: int,
              params: SamplingParams) -> dict[str, float]:
    """Step the environment at `rate` Hz for `seconds`; with an engine, keep `in_flight` requests going."""
    period = 1.0 / rate
    pending: set[str] = set()
    steps = finished = 0
    generated_before = engine.stats().generated_tokens if engine is not None else 0
    worst_late = 0.0
    force = 0.0
    start = next_tick = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        if now < next_tick:
            time.sleep(next_tick - now)
        worst_late = max(worst_late, time.perf_counter() - next_tick)
        next_tick += period
        obs = sim.step(force)
        steps += 1
        if engine is None:
            continue
        for out in engine.poll():  # never blocks
            pending.discard(out.request_id)
            finished += 1
            force = (hash(out.outputs[0].text) % 3 - 1) * 0.5  # the "action" the policy chose
        while len(pending) < in_flight:
            prompt = f"State x={obs[0]:.3f} v={obs[1]:.3f} angle={obs[2]:.3f}. Push left, right or wait?"
            pending.add(engine.submit(prompt, params))
    elapsed = time.perf_counter() - start
    tokens = 0
    if engine is not None:
        tokens = engine.stats().generated_tokens - generated_before  # also tokens of unfinished requests
        for rid in pending:  # leave nothing running
            engine.abort(rid)
    return {"steps_per_s": steps / elapsed, "worst_late_ms": worst_late * 1e3,
            "tok_per_s": tokens / elapsed, "finished": finished}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model path or name (default: plait's default model)")
    ap.add_argument("--rate", type=float, default=100.0, help="environment steps per second to hold")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each phase")
    ap.add_argument("--in-flight", type=int, default=8, help="policy requests kept in flight")
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=0)
    with BackgroundLLM(args.model) as engine:
        engine.result(engine.submit("warm up", SamplingParams(max_tokens=2)))  # first-use compiles, caches
        idle = run_phase(None, CartSim(), args.rate, args.seconds, 0, params)
        busy = run_phase(engine, CartSim(), args.rate, args.seconds, args.in_flight, params)
    print(f"target {args.rate:.0f} steps/s, {args.in_flight} requests in flight, {args.seconds:.0f} s per phase")
    print(f"model idle: {idle['steps_per_s']:7.1f} env steps/s   worst tick late {idle['worst_late_ms']:6.1f} ms")
    print(f"model busy: {busy['steps_per_s']:7.1f} env steps/s   worst tick late {busy['worst_late_ms']:6.1f} ms   "
          f"engine {busy['tok_per_s']:.1f} output tok/s, {busy['finished']} requests finished")


if __name__ == "__main__":
    main()
