"""Admin routes: weight updates over HTTP only with an API key; the version in responses' engine and /metrics."""

import types

import httpx
import pytest

from tests.helpers import random_weights
from tests.server.test_server import MODEL, Server, make_async, metric

AUTH = {"Authorization": "Bearer s3cret"}


def test_admin_routes_are_refused_without_a_configured_key(tokenizer, tiny_model):
    srv = Server(make_async(tokenizer, tiny_model))
    try:
        r = httpx.get(srv.url + "/v1/admin/weight_version")
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        r = httpx.post(srv.url + "/v1/admin/update_weights", json={"path": "/x", "version": 1})
        assert r.status_code == 403
    finally:
        srv.stop()


def test_update_weights_over_http(tokenizer, tiny_model, monkeypatch):
    cfg, _ = tiny_model
    w2 = random_weights(cfg, seed=1)
    # A path the loader "reads" as W2: the file formats have their own tests; this one checks the route.
    import plait.loading

    monkeypatch.setattr(plait.loading, "load_model", lambda path, dtype=None: types.SimpleNamespace(weights=w2))
    srv = Server(make_async(tokenizer, tiny_model), api_key="s3cret")
    try:
        url = srv.url + "/v1/admin"
        assert httpx.get(url + "/weight_version").status_code == 401  # key configured but not given
        assert httpx.get(url + "/weight_version", headers=AUTH).json() == {"weight_version": None}
        r = httpx.post(url + "/update_weights", json={"path": "/w2", "version": "v2", "mode": "later"},
                       headers=AUTH, timeout=60)
        assert r.status_code == 400
        bad = dict(w2)
        bad.pop("model.norm.weight")
        monkeypatch.setattr(plait.loading, "load_model", lambda path, dtype=None: types.SimpleNamespace(weights=bad))
        r = httpx.post(url + "/update_weights", json={"path": "/bad", "version": "v2"}, headers=AUTH, timeout=60)
        assert r.status_code == 400 and "missing" in r.json()["error"]["message"]
        monkeypatch.setattr(plait.loading, "load_model", lambda path, dtype=None: types.SimpleNamespace(weights=w2))
        r = httpx.post(url + "/update_weights", json={"path": "/w2", "version": "v2", "mode": "continue"},
                       headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["weight_version"] == "v2" and r.json()["mode"] == "continue"
        assert httpx.get(url + "/weight_version", headers=AUTH).json() == {"weight_version": "v2"}
        text = httpx.get(srv.url + "/metrics").text
        assert 'plait:weight_version_info{model_name="tiny",version="v2"} 1.0' in text
        assert metric(text, "plait:weight_updates", model_name=MODEL) == 1
        ok = srv.client(api_key="s3cret").completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert ok.usage.completion_tokens == 2
    finally:
        srv.stop()
