"""benchmarks/backends_table.py: its cells, medians, ratios and table, and one real cell."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import trainer_runs

BENCHMARKS = os.path.join(trainer_runs.ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)
import backends_table  # noqa: E402

SCRIPT = os.path.join(BENCHMARKS, "backends_table.py")


def test_cells_name_each_columns_variant_engine_and_backend():
    spec = backends_table.cell_spec("torch_batch", "train", "bfloat16", "resnet164", 128, 4, None)
    assert spec == dict(model="resnet164", mode="train", batch=128, variant="fused+nchw+bf16",
                        steps=4, backend="torch", engine="batch")
    native = backends_table.cell_spec("pytorch", "infer", "float32", "resnet164", 128, 8, 2)
    assert native["variant"] == "torch+cl" and native["framework"] == "pytorch"
    assert native["threads"] == 2 and native["optimizer"]["momentum"] == 0.9
    # Inference-only columns have no training cells, and bf16 weights no float32 one.
    assert backends_table.cell_spec("tf_folded", "train", "float32", "resnet20", 8, 1, None) is None
    assert backends_table.cell_spec("pytorch_bf16w", "infer", "float32", "resnet20", 8, 1, None) is None
    assert backends_table.command(native)[:2] == [sys.executable, backends_table.TORCH_SCRIPT]
    elsewhere = backends_table.command({**native, "python": "/other/python"})
    assert elsewhere[:2] == ["/other/python", backends_table.TORCH_SCRIPT]


def test_medians_ratios_and_markdown():
    runs = [{"images_per_s": v, "first_step_s": f, "peak_rss_gb": m, "variant": "fused"}
            for v, f, m in ((10.0, 5.0, 1.0), (30.0, 7.0, 1.5), (20.0, 6.0, 1.2))]
    cell = backends_table.median_cell(runs + [{"error": "boom"}])
    assert (cell["images_per_s"], cell["first_step_s"], cell["peak_rss_gb"]) == (20.0, 6.0, 1.5)
    assert cell["failed_repeats"] == 1
    assert backends_table.median_cell([{"error": "boom"}]) == {"error": "boom"}

    def at(speed, memory=1.0):
        return {"images_per_s": speed, "peak_rss_gb": memory}

    table = {"train float32": {"tf_step": at(70.0), "jax_fit": at(14.0), "torch_fit": at(40.0, 6.0),
                               "torch_fit_nchw": at(45.0, 4.5), "pytorch": at(50.0, 3.0)}}
    columns = list(table["train float32"])
    ratios = backends_table.ratios(table, columns)["train float32"]
    assert ratios["torch_backend_best"] == "torch_fit_nchw"
    assert ratios["torch_backend_vs_pytorch"] == 0.9
    assert ratios["torch_backend_memory_vs_pytorch"] == 1.5
    assert ratios["jax_vs_tf_step"] == 0.2 and ratios["tf_step_vs_pytorch"] == 1.4
    table["train float32"]["jax_fit"] = {"error": "boom"}
    text = backends_table.markdown(table, columns, "images_per_s", ".1f")
    assert "| train float32 | 70.0 | error | 40.0 | 45.0 | 50.0 |" in text
    assert text.splitlines()[0].startswith("| | TF, package step | JAX, `fit` |")


@pytest.mark.parametrize("argv, message", [
    (["--columns=tf_step,nope"], "unknown nope"),
    (["--modes=train,serve"], "--modes"),
    (["--precisions=float16"], "--precisions"),
    (["--repeats=0"], ">= 1"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        backends_table.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_one_real_cell_writes_the_table_and_json(tmp_path):
    output = tmp_path / "table.json"
    process = subprocess.run(
        [sys.executable, SCRIPT, "--model=resnet20", "--batch=4", "--steps=1", "--repeats=1",
         "--columns=tf_step", "--modes=train", "--precisions=float32", f"--output={output}"],
        capture_output=True, text=True, timeout=600, cwd=trainer_runs.ROOT)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "CPU: " in process.stdout and "| train float32 |" in process.stdout
    report = json.loads(output.read_text())
    cell = report["table"]["train float32"]["tf_step"]
    assert cell["variant"] == "fused" and cell["images_per_s"] > 0 and cell["peak_rss_gb"] > 0
    assert report["command"].startswith("python benchmarks/backends_table.py --model=resnet20")
    assert (tmp_path / "table.md").read_text().startswith("Images/s")
