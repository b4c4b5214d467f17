"""The prefill/decode split (Splitwise): a prefill engine computes a prompt's KV and first token, the KV moves
through a connector (plait.distributed.kv_transfer) to a decode engine, which continues the request; the caller
sees one stream. `PDClient` runs it over two in-process engines, `PDRouter` over two Ray actors."""
