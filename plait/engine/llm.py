"""LLM: the offline API. Queue everything, drive the engine core until all finish, return in input order."""

from __future__ import annotations

from typing import Any, Sequence

from plait.config import EngineConfig
from plait.engine.weight_buckets import WeightBuckets
from plait.engine.builder import build_engine, describe
from plait.engine.output_processor import RequestState
from plait.engine.prefix_hold import PrefixHandle, hold_prefix_offline
from plait.engine.prefix_order import prefix_grouped_order
from plait.engine.prompts import encode_prompt, normalize_batch, params_per_prompt
from plait.engine.scoring import encode_pair, pair_batch, score_params, to_score
from plait.outputs import RequestOutput, ScoreOutput
from plait.params import SamplingParams


class LLM:
    """`LLM(model=None, **engine_config)`; see `plait.config.EngineConfig` for the settings."""

    def __new__(cls, *args: Any, data_parallel_size: int = 1, **kwargs: Any) -> Any:
        # data_parallel_size > 1: the same offline API over N engine replicas on Ray (plait.distributed).
        if data_parallel_size != 1:
            from plait.distributed.offline import DataParallelLLM

            return DataParallelLLM(*args, data_parallel_size=data_parallel_size, **kwargs)
        return super().__new__(cls)

    def __init__(self, model: str | None = None, *, verbose: bool = False, _prebuilt=None,
                 data_parallel_size: int = 1, **config: Any) -> None:
        self.config = EngineConfig(model=model, **config)
        self._built = _prebuilt if _prebuilt is not None else build_engine(self.config, offline=True)
        self.engine = self._built.core
        self.tokenizer = self._built.tokenizer
        self._next_id = 0
        self.weight_version = None  # the version given to the last update_weights (None: as loaded)
        self._weight_buckets = WeightBuckets()  # update_weights(..., final=False) stages here
        if verbose:
            print(describe(self._built))

    @property
    def load_seconds(self) -> float:
        return self._built.load_seconds

    def generate(self, prompts: Any, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for one prompt or a list (text or token ids). Returns outputs in input order."""
        batch = normalize_batch(prompts)
        params_list = params_per_prompt(sampling_params, len(batch))
        encoded = [encode_prompt(self.tokenizer, p) for p in batch]  # all errors before anything is queued
        order = range(len(encoded))
        if self.config.prefix_grouping and self.config.enable_prefix_caching and len(encoded) > 2:
            order = prefix_grouped_order([token_ids for _, token_ids in encoded])
        ids = [f"offline-{self._next_id + i}" for i in range(len(encoded))]  # in input order
        self._next_id += len(encoded)
        states: dict[str, RequestState] = {}  # in input order: _run returns outputs in this order
        try:
            for request_id, (text, token_ids), params in zip(ids, encoded, params_list):
                states[request_id] = RequestState(request_id, text, token_ids, params, self.tokenizer)
            for i in order:  # queued grouped by shared prefix, so each prefix is computed once
                self.engine.add_request(ids[i], encoded[i][1], params_list[i])
            return self._run(states, use_tqdm and len(states) > 1)
        finally:
            # Whatever ended the call early (bad input, KeyboardInterrupt, a callback's exception) must not leave
            # requests behind to hold KV and compute during the next call.
            for request_id in states:
                self.engine.abort(request_id)

    def chat(self, conversations: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             add_generation_prompt: bool = True, use_tqdm: bool = True) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation (a list of {role, content}) and generate."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=add_generation_prompt)
                   for c in conversations]
        token_prompts = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        return self.generate(token_prompts, sampling_params, use_tqdm)

    def score(self, prompts: Any, continuations: Any, use_tqdm: bool = False) -> list[ScoreOutput]:
        """Log-probability of each continuation given its prompt (one prompt for all, or one each), batched;
        cached prompt prefixes are not recomputed. See plait.engine.scoring."""
        pairs = [encode_pair(self.tokenizer, p, c) for p, c in pair_batch(prompts, continuations)]
        outs = self.generate([ids for ids, _ in pairs], [score_params(start) for _, start in pairs], use_tqdm)
        return [to_score(out, start) for out, (_, start) in zip(outs, pairs)]

    def _run(self, states: dict[str, RequestState], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(states), desc="generating", unit="req", dynamic_ncols=True)
        generated = 0
        while len(finished) < len(states):
            for out in self.engine.step():
                out.weight_version = self.weight_version
                state = states.get(out.request_id)
                if state is None:
                    continue
                for index, stop in state.process(out):
                    self.engine.finish_sample(out.request_id, index, stop)
                if state.finished and out.request_id not in finished:
                    finished[out.request_id] = state.output("final")
                    generated += sum(len(s.token_ids) for s in state.samples)
                    if bar is not None:
                        bar.update(1)
                        rate = bar.format_dict["elapsed"] or 1e-9
                        bar.set_postfix_str(f"{generated / rate:.0f} out tok/s")
            if not self.engine.has_unfinished() and len(finished) < len(states):
                raise RuntimeError("engine went idle before all requests finished")
        if bar is not None:
            bar.close()
        return [finished[i] for i in states]

    def hold_prefix(self, prompt: Any) -> PrefixHandle:
        """Compute `prompt` (text or token ids) if it is not cached and keep its full KV blocks resident until the
        handle's `release()`; see plait/engine/prefix_hold.py. ValueError for bad input or past the bounds."""
        return hold_prefix_offline(self, prompt)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix: no later request reuses KV computed before this call."""
        self.engine.reset_prefix_cache()

    def stats(self):
        return self.engine.stats()

    def update_weights(self, weights, version, mode: str = "drain", partial: bool = False, final: bool = True):
        """Swap in new weights (a state dict by HF names, or a path) tagged `version`; later outputs carry it.
        Between `generate` calls nothing is in flight, so every mode is the same here. A bad state dict raises
        ValueError and the old weights stay. `partial=True`: only some tensors (the others keep their values);
        `final=False`: one bucket of an update, staged until the final one (plait/engine/weight_buckets.py).
        Returns a WeightUpdateInfo (timings; `final` False for a staged bucket)."""
        from plait.engine.weights import prepare_update, swap_weights

        update = prepare_update(self._built, weights, version, mode, partial, final, self._weight_buckets)
        if not update.info.final:
            return update.info
        update.info.swap_seconds = swap_weights(self._built, update)
        self.weight_version = version
        return update.info
