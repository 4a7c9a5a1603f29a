"""The model server's command line and its KV cache, decided before vLLM starts (no server is started here;
tests/test_serving.py runs real ones)."""

from __future__ import annotations

import pytest

from flywheel_dagster.config import CPU_KV_CACHE_BYTES, ConfigError, build_config
from flywheel_dagster.engines.vllm_engine import KvCacheError, check_kv_cache_fits, free_memory_bytes, kv_cache_bytes
from flywheel_dagster.serving.serve import build_gateway
from flywheel_dagster.serving.upstream import UpstreamError, VllmServer


def _server(tmp_path, **kw) -> VllmServer:  # noqa: ANN001
    return VllmServer(
        model_dir="/m", served_name="m", port=8123, chat_template="x", log_path=tmp_path / "v.log", device="cpu", **kw
    )


def test_the_cpu_kv_cache_is_sized_in_bytes_never_as_a_share_of_the_numa_node(tmp_path):
    cmd = _server(tmp_path).command()
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(CPU_KV_CACHE_BYTES)
    assert "--gpu-memory-utilization" not in cmd  # on the CPU that fraction is of the node: it failed at 12 GiB
    cmd = _server(tmp_path, kv_cache_bytes=256 * 2**20, memory_fraction=0.5).command()
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(256 * 2**20) and "--gpu-memory-utilization" not in cmd
    assert kv_cache_bytes("cuda", None) is None  # on GPUs vLLM's own memory share decides, unless set
    assert kv_cache_bytes("cuda", 2**30) == 2**30


def test_kv_cache_bytes_reads_units_and_names_a_bad_value():
    assert build_config({"engine": {"kv_cache_bytes": "256MiB"}}).engine.kv_cache_bytes == 256 * 2**20
    assert build_config({"serving": {"kv_cache_bytes": 1_000_000}}).serving.kv_cache_bytes == 1_000_000
    with pytest.raises(ConfigError, match="engine.kv_cache_bytes"):
        build_config({"engine": {"kv_cache_bytes": "lots"}})


def test_a_kv_cache_that_does_not_fit_is_refused_before_vllm_starts_and_says_what_to_set(tmp_path):
    too_big = free_memory_bytes() + 2**40
    with pytest.raises(KvCacheError, match=r"engine\.kv_cache_bytes.*does not fit.*set engine\.kv_cache_bytes lower"):
        check_kv_cache_fits(too_big, "cpu", "engine.kv_cache_bytes")
    with pytest.raises(UpstreamError, match=r"serving\.kv_cache_bytes"):
        _server(tmp_path, kv_cache_bytes=too_big).start(timeout_s=5)
    check_kv_cache_fits(CPU_KV_CACHE_BYTES, "cpu", "engine.kv_cache_bytes")  # the default fits here


def test_the_model_server_stays_on_loopback_behind_its_own_key_whatever_the_gateway_binds(tmp_path, untrained_model):
    cfg = build_config({"model": {"kind": "hf", "hf_path": str(untrained_model)}})
    gw = build_gateway(cfg, tmp_path / "home", None, "0.0.0.0", "operator-token")
    server = gw.server_factory(str(untrained_model), False, 8124)
    cmd = server.command()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
    assert server.api_key and server.api_key not in " ".join(cmd)  # passed in the environment, not on `ps`
    assert server.headers == {"authorization": f"Bearer {server.api_key}"}
    assert _server(tmp_path).api_key != _server(tmp_path).api_key  # one key per process
