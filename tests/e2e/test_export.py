"""`abft export RUN --merged OUT` (abft.export) and the base-model fingerprint of saved trained weights.

Finished runs of a tiny random Llama (a delta run and a LoRA run) are exported; a subprocess that cannot import
abft loads OUT with plain transformers, and its logits must equal base + load_delta computed here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import tiny_gpt2, tiny_llama
from toy_dataset import SMALL

from abft.errors import UserError
from abft.export import export_merged, reproduce_command
from abft.models.arch import find_qk_slices
from abft.models.fingerprint import base_fingerprint
from abft.models.lora import add_lora
from abft.models.weights import load_delta, read_meta, save_delta, save_trained

IDS = [[1, 5, 9, 14, 30, 41, 7, 22, 3, 60, 12, 2]]  # any ids below the tiny vocabulary (100)


def _finished(tmp_path_factory, model_dir, data_csv, name, *flags) -> Path:
    from abft.cli import main

    out = tmp_path_factory.mktemp(name) / "run"
    argv = ["run", "--model", str(model_dir), "--dataset", str(data_csv), *SMALL, "--output", str(out), *flags]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABFT_NO_PROGRESS", "1")
        mp.setattr("abft.report.html.write_report", lambda path: Path(path) / "report.html")
        assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def delta_run(tmp_path_factory, tiny_word_model_dir, data_csv):
    return _finished(tmp_path_factory, tiny_word_model_dir, data_csv, "delta-run", "--lr", "0.05")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_word_model_dir, data_csv):
    return _finished(tmp_path_factory, tiny_word_model_dir, data_csv, "lora-run", "--lora-r", "2", "--lr", "0.05")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, delta_run, lora_run):
    """{"delta": OUT, "lora": OUT}; the LoRA one into an existing empty directory (allowed)."""
    root = tmp_path_factory.mktemp("exports")
    (root / "lora").mkdir()
    return {
        "delta": export_merged(delta_run, root / "new" / "delta", log=lambda *_: None),
        "lora": export_merged(lora_run, root / "lora", log=lambda *_: None),
    }


def _base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# -------------------------------------------------------------------------------------------- round trip
LOADER = r"""
import importlib.abc, json, sys
class NoAbft(importlib.abc.MetaPathFinder):  # as if abft were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "abft" or name.startswith("abft."):
            raise ImportError("abft is not installed here")
sys.meta_path.insert(0, NoAbft())
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
ids, outs, result = json.loads(sys.argv[1]), sys.argv[2:-1], sys.argv[-1]
logits, words = {}, {}
for i, out in enumerate(outs):
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    with torch.no_grad():
        logits[str(i)] = model(torch.tensor(ids)).logits.contiguous()
    words[str(i)] = tokenizer("sentiment : positive w3")["input_ids"]
assert not any(m == "abft" or m.startswith("abft.") for m in sys.modules), "abft was imported"
save_file(logits, result, metadata={"words": json.dumps(words), "dtype": str(model.dtype)})
"""


def test_exported_model_loads_without_abft_with_the_logits_of_base_plus_delta(
    tmp_path, exported, delta_run, lora_run, tiny_word_model_dir
):
    """Exact equality: the same weights, the same torch, one thread and SDPA in both processes."""
    from transformers import AutoTokenizer

    result = tmp_path / "logits.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    outs = [str(exported["delta"]), str(exported["lora"])]
    done = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(IDS), *outs, str(result)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = load_file(result)
    with safe_open(str(result), framework="pt") as f:
        words = json.loads(f.metadata()["words"])
    base_words = AutoTokenizer.from_pretrained(tiny_word_model_dir)("sentiment : positive w3")["input_ids"]
    base_logits = _base(tiny_word_model_dir)(torch.tensor(IDS)).logits
    for i, run in enumerate((delta_run, lora_run)):
        reference = _base(tiny_word_model_dir)
        load_delta(reference, run)
        with torch.no_grad():
            expected = reference(torch.tensor(IDS)).logits
        assert not torch.equal(expected, base_logits)  # training moved the model
        assert torch.equal(loaded[str(i)], expected), (loaded[str(i)] - expected).abs().max()
        assert words[str(i)] == base_words  # the base's tokenizer, unchanged
        saved = load_file(str(Path(outs[i]) / "model.safetensors"))  # the stored weights: base + delta exactly
        state = reference.state_dict()
        assert saved and all(torch.equal(tensor, state[name]) for name, tensor in saved.items())


def test_exported_directory_holds_only_safetensors_json_and_the_card(exported):
    for out in exported.values():
        names = sorted(p.name for p in out.iterdir())
        assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json"} <= set(names), names
        assert all(n.endswith((".json", ".safetensors", ".md", ".jinja", ".txt", ".model")) for n in names), names
        assert not list(out.parent.glob(f".{out.name}.tmp-*"))  # the temporary directory was renamed
        mask = os.umask(0)
        os.umask(mask)
        assert all((p.stat().st_mode & 0o777) == (0o666 & ~mask) for p in out.iterdir())  # not 0600
        assert "auto_map" not in json.loads((out / "config.json").read_text())


# ---------------------------------------------------------------------------------------------- the card
def test_model_card_states_base_fingerprint_data_recipe_metrics_and_command(exported, delta_run, tiny_word_model_dir):
    card = (exported["delta"] / "README.md").read_text()
    config = json.loads((delta_run / "config.json").read_text())
    metrics = json.loads((delta_run / "metrics.json").read_text())
    front, body = re.fullmatch(r"---\n(.*?)\n---\n(.*)", card, re.S).groups()
    assert "library_name: transformers" in front.splitlines()
    assert "- abft" in front.splitlines() and "tags:" in front.splitlines()
    assert "base_model:" not in front  # a local directory is no hub id
    fingerprint = read_meta(delta_run / "delta.safetensors")["base_fingerprint"]
    assert (
        fingerprint
        == base_fingerprint(_base(tiny_word_model_dir), find_qk_slices(_base(tiny_word_model_dir)))["base_fingerprint"]
    )
    assert f"`{fingerprint}`" in body and f"`{tiny_word_model_dir}`" in body
    assert f"`{config['data']['dataset']}`" in body and "k = 2 demonstrations" in body
    assert "ABFT (attention loss on induction heads)" in body and "only W_Q and W_K" in body
    assert "lr 0.05" in body and "recipe `auto`" in body
    for stage in ("before", "after"):
        m = metrics[stage]
        row = f"| {stage} | {m['accuracy']:.3f} | {m['accuracy_se']:.3f} |"
        assert row in body and body.split(row)[1].splitlines()[0].endswith(f"| {m['prompts']} |")
    assert f"| change | {metrics['after']['accuracy'] - metrics['before']['accuracy']:+.3f} |" in body
    assert "validation: 128 prompts" in body and f"step {metrics['validation']['kept_step']} kept" in body
    command = re.search(r"## Reproduce\n```\n(abft run .*)\n(abft export .*)\n```", body)
    assert command.group(2) == f"abft export {delta_run} --merged {exported['delta']}"
    assert _config_of(command.group(1)) == _without_output(config)


def test_lora_card_and_hub_front_matter(exported, lora_run):
    card = (exported["lora"] / "README.md").read_text()
    assert "a LoRA adapter (rank 2, alpha 32) on the query and key projections, merged into W_Q / W_K" in card
    assert f"`{read_meta(lora_run / 'adapter')['base_fingerprint']}`" in card
    assert "--lora-r 2" in card


def _config_of(command: str) -> dict:
    """The config the CLI's parser makes of `abft run ...`, as config.json keeps it."""
    from abft.cli import build_parser
    from abft.config import RunConfig

    words = shlex.split(command)
    assert words[:2] == ["abft", "run"]
    args = vars(build_parser().parse_args(words[1:]))
    config = json.loads(RunConfig().to_json())
    for key, value in args.items():
        section, _, name = key.rpartition(".")
        target = config[section] if section else config
        if name in target:
            target[name] = list(value) if isinstance(value, tuple) else value
    return _without_output(config)


def _without_output(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    for key in ("output", "command", "recipe_choices", "runtime"):  # records, not settings
        config.pop(key, None)
    for key in ("val_samples", "keep"):  # chosen by --recipe auto, which chooses the same again
        config["train"][key] = None
    return config


def test_card_of_a_run_whose_metrics_json_has_another_shape(tmp_path, delta_run):
    """metrics.json is not bound to the run like config.json: read for numbers only, the rest not recorded."""
    run = tmp_path / "run"
    shutil.copytree(delta_run, run)
    weird = {"dataset": "x\n---\n`", "before": 7, "after": {"accuracy": "high", "prompts": [1]}, "validation": [1]}
    (run / "metrics.json").write_text(json.dumps(weird))
    card = (export_merged(run, tmp_path / "out", log=lambda *_: None) / "README.md").read_text()
    assert "Accuracy before and after training: not recorded" in card
    assert card.count("\n---\n") == 1 and re.search(r"^# \S+ \+ ABFT on x--- \(k = 2\)$", card, re.M)  # no injection


def test_reproduce_command_of_the_defaults_and_of_negated_flags():
    from abft.config import RunConfig

    cfg = RunConfig()
    assert reproduce_command(cfg) == "abft run"
    cfg.eval.fore_test, cfg.train.pid, cfg.data.dataset = False, (0.1, 0.0, 2e-05), "my data.csv"
    assert reproduce_command(cfg) == "abft run --dataset 'my data.csv' --pid 0.1 0 2e-05 --no-fore-test"


# ------------------------------------------------------------------------------------------------ refusals
def test_a_non_empty_or_file_out_is_refused_and_left_alone(tmp_path, delta_run):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty") as excinfo:
        export_merged(delta_run, out, log=lambda *_: None)
    _one_line_error(excinfo)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        export_merged(delta_run, tmp_path / "file", log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]  # no temporary left


@pytest.mark.parametrize("failure", ["disk full", "out filled meanwhile"])
def test_a_failed_write_leaves_nothing_but_what_was_there(tmp_path, monkeypatch, delta_run, failure):
    """The rename into OUT fails (a full disk, or OUT filled by someone since the check): the temporary model and
    the parent directories the export created are removed; a file of the user's in OUT is kept."""
    import errno

    out = tmp_path / "new" / "deeper" / "out"
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            if failure == "disk full":
                raise OSError(errno.ENOSPC, "No space left on device")
            Path(dst).mkdir()
            (Path(dst) / "theirs.txt").write_text("theirs")
        return real(src, dst)

    monkeypatch.setattr("abft.export.os.replace", replace)
    with pytest.raises(UserError, match=f"cannot write the merged model to {out}") as excinfo:
        export_merged(delta_run, out, log=lambda *_: None)
    _one_line_error(excinfo)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    if failure == "disk full":
        assert left == []
    else:
        assert left == ["new", "new/deeper", "new/deeper/out", "new/deeper/out/theirs.txt"]


def test_a_run_without_weights_or_unfinished_is_refused(tmp_path, delta_run):
    run = tmp_path / "run"
    shutil.copytree(delta_run, run)
    (run / "delta.safetensors").unlink()
    with pytest.raises(UserError, match="no trained weights in"):
        export_merged(run, tmp_path / "out", log=lambda *_: None)
    shutil.copy(delta_run / "delta.safetensors", run)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "failed"}))
    with pytest.raises(UserError, match="is not a finished run"):
        export_merged(run, tmp_path / "out", log=lambda *_: None)
    with pytest.raises(UserError, match="does not exist"):
        export_merged(tmp_path / "nothing", tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_a_delta_of_another_base_is_refused_naming_both_fingerprints(tmp_path, delta_run, tiny_word_model_dir):
    other = tiny_llama(seed=1, max_position_embeddings=512)  # same architecture and shapes, other weights
    theirs = base_fingerprint(other, find_qk_slices(other))["base_fingerprint"]
    run = tmp_path / "run"
    shutil.copytree(delta_run, run)
    save_delta(other, find_qk_slices(other), run / "delta.safetensors", meta={"model": "other-llama"})
    base = _base(tiny_word_model_dir)
    ours = base_fingerprint(base, find_qk_slices(base))["base_fingerprint"]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(UserError) as excinfo:
        load_delta(base, run)
    message = _one_line_error(excinfo)
    assert "was trained on another base model (other-llama)" in message
    assert theirs[:16] in message and ours[:16] in message and theirs != ours
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # unchanged
    with pytest.raises(UserError, match="trained on another base model"):
        export_merged(run, tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_an_adapter_of_another_base_is_refused(tmp_path, tiny_word_model_dir):
    other = add_lora(tiny_llama(seed=1, max_position_embeddings=512), r=2)
    save_trained(other, tmp_path, meta={"model": "other-llama"})
    with pytest.raises(UserError, match="trained on another base model") as excinfo:
        load_delta(_base(tiny_word_model_dir), tmp_path / "adapter")
    _one_line_error(excinfo)
    mine = add_lora(_base(tiny_word_model_dir), r=2)
    save_trained(mine, tmp_path / "mine")
    load_delta(_base(tiny_word_model_dir), tmp_path / "mine")  # its own base: merged


def test_edited_metadata_is_refused(tmp_path, tiny_word_model_dir):
    base = _base(tiny_word_model_dir)
    save_delta(base, find_qk_slices(base), tmp_path / "delta.safetensors")
    tensors = load_file(str(tmp_path / "delta.safetensors"))
    for bad in ("{", "[1]", json.dumps({"base_fingerprint": "abc", "base_dtype": "float32"})):
        save_file(tensors, str(tmp_path / "delta.safetensors"), metadata={"abft": bad})
        with pytest.raises(UserError, match="metadata is not as abft writes it"):
            load_delta(base, tmp_path)


# ----------------------------------------------------------------------------------------- old deltas
def test_a_delta_without_metadata_still_loads_and_exports(tmp_path, delta_run, tiny_word_model_dir):
    run = tmp_path / "run"
    shutil.copytree(delta_run, run)
    tensors = load_file(str(delta_run / "delta.safetensors"))
    save_file(tensors, str(run / "delta.safetensors"))  # as abft wrote it before fingerprints: no metadata
    assert read_meta(run / "delta.safetensors") == {}
    old, new = _base(tiny_word_model_dir), _base(tiny_word_model_dir)
    load_delta(old, run)
    load_delta(new, delta_run)
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True))
    out = export_merged(run, tmp_path / "out", log=lambda *_: None)
    recorded = read_meta(delta_run / "delta.safetensors")["base_fingerprint"]
    assert f"`{recorded}`" in (out / "README.md").read_text()  # computed from the base: the one save recorded


# ------------------------------------------------------------------------------------------ fingerprint
def test_fingerprint_ignores_what_a_delta_replaces_and_nothing_else():
    model = tiny_gpt2()
    slices = find_qk_slices(model)
    first = base_fingerprint(model, slices)
    assert re.fullmatch("[0-9a-f]{64}", first["base_fingerprint"]) and first["base_dtype"] == "float32"
    c_attn = model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        c_attn.weight[:, :32] += 1  # Q columns: replaced by a delta, so the same base
        c_attn.bias[32:64] += 1  # K bias: replaced too
        assert base_fingerprint(model, slices) == first
        assert base_fingerprint(model) != first  # an adapter (replaces nothing) sees them
        c_attn.weight[:, 64:] += 1  # V columns: not replaced, another base
        assert base_fingerprint(model, slices) != first
    assert base_fingerprint(tiny_gpt2(seed=1), slices) != first


def test_fingerprint_of_a_bf16_run_matches_its_base_loaded_in_fp32():
    fp32 = tiny_llama()
    bf16 = tiny_llama().to(torch.bfloat16)
    recorded = base_fingerprint(bf16, find_qk_slices(bf16))
    assert recorded["base_dtype"] == "bfloat16"
    assert base_fingerprint(fp32, find_qk_slices(fp32), dtype="bfloat16") == recorded
    assert base_fingerprint(fp32, find_qk_slices(fp32)) != recorded  # in its own dtype: more bits
    assert base_fingerprint(tiny_llama(seed=1), find_qk_slices(fp32), dtype="bfloat16") != recorded


def test_fingerprint_of_a_lora_model_is_its_base_model_s():
    base = tiny_llama()
    lora = add_lora(tiny_llama(), r=2)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter: not part of the base
    assert base_fingerprint(lora) == base_fingerprint(base)


def test_abft_export_command(capsys, tmp_path, delta_run):
    """The subcommand: the directory on success (exit 0), one line and exit 2 for an OUT that holds files."""
    from abft.cli import main

    out = tmp_path / "merged"
    assert main(["export", str(delta_run), "--merged", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    assert main(["export", str(delta_run), "--merged", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("abft: error:")


def test_model_card_change_uses_the_paired_error_when_the_run_has_it():
    from abft.export import _results

    stage = {"accuracy": 0.6, "accuracy_se": 0.03, "prompts": 256}
    metrics = {"before": stage, "after": {**stage, "accuracy": 0.7}}
    assert "| change | +0.100 | 0.042 | [+0.017, +0.183] |" in "\n".join(_results(metrics))  # independent
    metrics["change"] = {"se": 0.02}
    text = "\n".join(_results(metrics))
    assert "| change | +0.100 | 0.020 | [+0.061, +0.139] |" in text and "paired" in text
    metrics["change"] = {"se": "0.02"}  # an edited metrics.json: back to the independent error
    assert "| change | +0.100 | 0.042 |" in "\n".join(_results(metrics))
