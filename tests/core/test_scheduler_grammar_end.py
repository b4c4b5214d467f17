"""A runner reporting that a request's grammar ended finishes it with 'stop', even on its last allowed token."""

from plait.core.sched_output import ModelOutput, SampledToken
from tests.core.test_scheduler import make, req


def _step(s, grammar_ended: bool):
    out = s.schedule()
    s.update(out, ModelOutput({c.request_id: [SampledToken(7, grammar_ended=grammar_ended)]
                               for c in out.chunks if c.sample}))


def test_grammar_end_finishes_with_stop_and_frees_blocks():
    s = make()
    a = req("a", 5, max_tokens=10)
    s.add(a)
    _step(s, False)
    _step(s, True)
    assert a.finished and a.finish_reason == "stop" and a.stop_reason is None and len(a.output_token_ids) == 2
    assert s.kv.all_blocks_free()


def test_grammar_end_on_the_last_allowed_token_is_stop_not_length():
    s = make()
    b = req("b", 5, max_tokens=1)
    s.add(b)
    _step(s, True)
    assert b.finish_reason == "stop"
