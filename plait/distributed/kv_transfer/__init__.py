"""Moving one request's prompt KV from a prefill engine to a decode engine (the prefill/decode split).

- `payload.KVPayload`: what moves (the prompt's token ids, the K/V of its leading full blocks layer by layer,
  block size, dtype, the first sampled token).
- `connector.KVConnector`: send / receive / drop by request key; `InProcessConnector` (one process, tests),
  `ray_connector.RayConnector` (Ray object store), `tcp_connector.TcpConnector` (a socket between two processes).
- `engine_kv`: copying blocks out of an engine's KV cache and into another's prefix cache (engine thread only).
"""
