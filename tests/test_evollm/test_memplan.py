"""The memory plan: where sources live and what batch fits, on the paper's shapes."""

import pytest

from evollm.fsutil import parse_size
from evollm.memplan import kv_bytes_per_token, plan_memory

MISTRAL = {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096, "num_hidden_layers": 32}
PARAMS = 7_241_732_096          # Mistral-7B-v0.1


def paper(budget, batch=256, max_tokens=300 + 1024, device="cuda:0"):
    return plan_memory(device=device, budget=budget, model_bytes=2 * PARAMS, largest_tensor=32000 * 4096,
                       n_inputs=4, store_bytes_per_param=2, model_params=PARAMS,
                       kv_per_token=kv_bytes_per_token(MISTRAL, 2), max_tokens=max_tokens, batch=batch)


def test_kv_bytes_per_token_of_mistral_7b():
    assert kv_bytes_per_token(MISTRAL, 2) == 128 * 1024          # 2 x 32 layers x 8 heads x 128 x 2 bytes
    assert kv_bytes_per_token({"text_config": MISTRAL}, 2) == 128 * 1024


def test_the_paper_run_on_80gb_streams_the_sources_from_host_and_fills_the_card():
    p = paper(int(parse_size("80GB") * 0.92))
    assert p.sources_on == "host" and p.batch == 256 and p.device_bytes <= p.budget
    assert p.sources_bytes == 4 * 2 * PARAMS                     # base + 3 sources in bfloat16: ~58 GB
    text = p.describe()
    assert text.startswith("plan: sources on host (57.9 GB pinned), candidate on cuda:0 14.5 GB, KV")
    assert "batch 256" in text


def test_a_larger_card_keeps_the_sources_on_the_device():
    p = paper(int(parse_size("141GB") * 0.92))
    assert p.sources_on == "device" and p.batch == 256 and p.device_bytes <= p.budget


def test_the_batch_shrinks_to_what_fits_and_never_exceeds_the_tasks():
    p = paper(int(parse_size("40GB")))
    assert p.sources_on == "host" and 1 <= p.batch < 256 and p.device_bytes <= p.budget
    assert paper(int(parse_size("141GB")), batch=64).batch == 64


def test_too_small_a_budget_says_what_does_not_fit():
    with pytest.raises(MemoryError, match=r"candidate model \(14.5 GB\).*do not fit in 10.0 GB on cuda:0"):
        paper(int(parse_size("10GB")))


def test_on_the_cpu_sources_stay_in_the_one_memory():
    assert paper(int(parse_size("96GB")), device="cpu").sources_on == "device"
    with pytest.raises(MemoryError, match=r"the sources \(57.9 GB\), the candidate model"):
        paper(int(parse_size("24GB")), device="cpu")


def test_a_dfs_plan_holds_both_models_and_a_kv_entry_per_hop():
    """The paper's DFS shape: two 7B models on the device, paths of 2 x 64 slots (KV per hop)."""
    hops = dict(MISTRAL, num_hidden_layers=128)
    p = plan_memory(device="cuda:0", budget=int(parse_size("80GB") * 0.92), model_bytes=2 * 2 * PARAMS,
                    largest_tensor=0, n_inputs=0, store_bytes_per_param=0, model_params=0,
                    kv_per_token=kv_bytes_per_token(hops, 2), max_tokens=300 + 1024, batch=256)
    assert p.kv_per_token == 4 * 128 * 1024 and p.device_bytes <= p.budget and 16 <= p.batch < 256
    assert p.describe().startswith("plan: models on cuda:0 29.0 GB (candidates share their layers), KV")


@pytest.mark.parametrize("text, n", [("80GB", 80 * 10**9), ("1.5GiB", int(1.5 * 2**30)), ("500 MB", 5 * 10**8),
                                     (1234, 1234)])
def test_sizes(text, n):
    assert parse_size(text) == n
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")
