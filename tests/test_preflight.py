"""Bad input is one line naming the key, before any expensive work: every kind the stages would find late."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, budget_three_ways, run_tool

SMOKE = ["experiment=smoke"]


@pytest.mark.parametrize("override, message", [
    ("search.storage=foo://x", "search.storage='foo://x': unsupported URL"),
    ("search.storage=postgresql://u@127.0.0.1:1/db",
     "search.storage='postgresql://u@127.0.0.1:1/db': cannot be opened"),
    ("search.storage=sqlite:////etc/hostname/x.db", "folder /etc/hostname cannot be written"),
    ("budget.reference=uniform3_r32", "budget.reference='uniform3_r32': bits and rank must be on the ladders"),
    ("quant.group_size=128", "quant.group_size=128: does not divide the input width 64 of model.layers.0"),
    ("budget=bytes budget.value=1000", "budget.value=1000: infeasible"),
    ("quant.targets=[foo_proj]", "quant.targets=['foo_proj']: no such linear"),
    ("export.target=vllm", "quant.bits=[2, 4, 8]: export.target=vllm loads 4, 8, 16 bits only (vLLM's GPTQ (Marlin) "
     "kernels: 4- and 8-bit symmetric, 16 = unquantized), not 2"),
    ("export.target=sglang quant.bits=[3,4]", "quant.bits=[3, 4]: export.target=sglang loads 4, 8, 16 bits only"),
    ("export.target=vllm quant.bits=[4,8] quant.desc_act=true", "quant.desc_act=true: export.target=vllm refuses"),
    ("export.target=sglang quant.bits=[4,8] quant.sym=false", "quant.sym=false: export.target=sglang loads symmetric"),
    ("export.target=vllm quant.bits=[4,8] quant.group_size=16", "quant.group_size=16: export.target=vllm loads "
     "group sizes 32, 64, 128"),
    ("export.target=sglang quant.bits=[4,8] search.granularity=module", "search.granularity=module: "
     "export.target=sglang fuses q/k/v and gate/up into one layer with one quantization"),
    ("export.target=vllm quant.bits=[4,8] quant.targets=[q_proj,v_proj,o_proj]", "quant.targets=['q_proj', "
     "'v_proj', 'o_proj']: export.target=vllm fuses q_proj, k_proj, v_proj into one quantized layer"),
    ("export.target=vllm quant.bits=[4,8] lora.ranks=[8,1024]", "lora.ranks=[8, 1024]: export.target=vllm serves "
     "ranks up to 512"),
])
def test_check_rejects_in_one_line_naming_the_key(override, message):
    start = time.monotonic()
    res = run_tool([sys.executable, "-m", "stages.cli", "check", *SMOKE, *override.split()], cwd=ROOT, timeout=120)
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    print(f"{override}: rejected in {time.monotonic() - start:.1f} s")


def _user_data(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("no test rows", "the test split is empty"),
    ("few train rows", "quant.calib_samples=32: the calibration split holds only 20 examples"),
    ("long answer", "task.max_length=64: example train-00003 has an answer of"),
    ("train below one batch", "finetune.batch_size=8: the train split holds only 5 examples"),
    ("unknown split value", "split column has values ['holdout']"),
    ("malformed line", "line 7 is not JSON"),
    ("json object", "a .json file must hold a list of examples, not dict"),
    ("empty answers jsonl", "task.answer_column='answer': 2 of 120 rows of"),
    ("empty answers csv", "task.answer_column='answer': 2 of 120 rows of"),
])
def test_prepare_rejects_bad_task_data_before_building_the_model(tmp_path, case, message):
    rows = [{"prompt": f"q{i}", "answer": f"a{i}", "split": "train" if i < 100 else "val"} for i in range(120)]
    if case == "few train rows":
        rows = [{**r, "split": {0: "train", 1: "val", 2: "test"}[i % 3]} for i, r in enumerate(rows[:60])]
    if case in ("long answer", "unknown split value", "malformed line", "json object"):
        rows = [{**r, "split": ["train", "val", "test"][i % 3]} for i, r in enumerate(rows)]
        rows[9]["answer"] = "x" * 100 if case == "long answer" else rows[9]["answer"]  # the fourth train row
    if case == "train below one batch":
        rows = [{**r, "split": "train" if i < 5 else ["val", "test"][i % 2]} for i, r in enumerate(rows[:60])]
    if case == "unknown split value":
        rows[4]["split"] = "holdout"
    source = _user_data(tmp_path, rows)
    if case == "malformed line":
        lines = Path(source).read_text().splitlines()
        lines[6] = lines[6][:-3]  # a truncated line
        Path(source).write_text("\n".join(lines) + "\n")
    if case == "json object":
        source = str(tmp_path / "data.json")
        Path(source).write_text(json.dumps({"rows": rows}))
    if case.startswith("empty answers"):  # rows 8 and 31 (from 1): one empty, one of white space or null
        rows[7]["answer"], rows[30]["answer"] = "", None if case.endswith("jsonl") else "  "
        source = _user_data(tmp_path, rows)
        if case.endswith("csv"):
            import pandas as pd

            source = str(tmp_path / "data.csv")
            pd.DataFrame(rows).to_csv(source, index=False)
        message += f" {source} have an empty answer (nothing to train or score on) (rows 8, 31)"
    params = tmp_path / "p.yaml"
    from stages.params import compose, to_yaml

    calib = "task.calib=4" if case == "train below one batch" else "task.calib=32"
    extra = ["quant.calib_samples=4", "profile.samples=4"] if case == "train below one batch" else []
    params.write_text(to_yaml(compose([*SMOKE, f"task.source={source}", calib, *extra])))
    start = time.monotonic()
    res = run_tool([sys.executable, "-m", "stages.prepare", "--params", str(params), "--out", str(tmp_path / "p")],
                   cwd=ROOT, timeout=300)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0 and last.startswith("error:") and message in last, res.stderr[-2000:]
    assert not (tmp_path / "p" / "model").exists()  # stopped before the model was built
    print(f"{case}: rejected in {time.monotonic() - start:.1f} s")


@pytest.mark.parametrize("case, message", [
    ("bin weights only", "folder has no .safetensors weights (only pytorch_model.bin"),
    ("no chat template", "its tokenizer has no chat template"),
])
def test_a_model_folder_the_pipeline_cannot_use_is_one_line_before_any_work(tmp_path, tiny_dir, case, message):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    if case == "bin weights only":
        for f in folder.glob("*.safetensors"):
            f.rename(folder / "pytorch_model.bin")  # what a folder of PyTorch pickles looks like to the checks
    else:
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    from stages.params import compose, to_yaml

    params = tmp_path / "p.yaml"
    params.write_text(to_yaml(compose([*SMOKE, f"model.source={folder}"])))
    start = time.monotonic()
    res = run_tool([sys.executable, "-m", "stages.prepare", "--params", str(params), "--out", str(tmp_path / "p")],
                   cwd=ROOT, timeout=300)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0 and last.startswith("error:") and message in last, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "p" / "model").exists()
    print(f"{case}: rejected in {time.monotonic() - start:.1f} s")


def test_the_budget_checked_before_prepare_is_the_one_the_search_binds_on(tmp_path):
    from autoqra.params import load_params
    from autoqra.pipeline.prepare import prepare
    from stages.params import compose

    (tmp_path / "p").mkdir()
    metrics = prepare(load_params(compose(SMOKE)), tmp_path / "p")
    (tmp_path / "p" / "metrics.json").write_text(json.dumps(metrics))
    for extra in ([], ["budget=bytes", "budget.value=9000000"]):
        p = load_params(compose([*SMOKE, *extra]))
        ways = budget_three_ways(p, tmp_path / "p", tmp_path / "records")
        assert ways[0] == ways[1] == ways[2], (extra, ways)  # to the byte
        assert ways[0][2] == metrics["train_labelled_max"] < p.task.max_length - 1  # a count, not the bound
