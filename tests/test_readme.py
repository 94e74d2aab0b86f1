"""The README's result tables say what the JSON records in results/ say: each figure is recomputed from the
record it came from and compared with the table cell, as printed."""

import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def record(name: str) -> dict:
    return json.loads((ROOT / "results" / name).read_text(encoding="utf-8"))


def row(first_cell: str, section: str = "") -> list[str]:
    """The cells of the README table row whose first cell is first_cell (bold marks and backticks removed), the
    first one after the heading `section`."""
    for line in README[README.index(section):].splitlines():
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].replace("`", "") == first_cell:
            return cells
    raise AssertionError(f"no README table row starts with {first_cell!r}")


def mean_std(values: list[float]) -> str:
    """mean ± sample standard deviation, one decimal, as the README prints it."""
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def test_ptb_small_table_is_its_record():
    ptb = record("ptb-small.json")
    assert row("this toolkit, 13 epochs")[1:3] == [f"{ptb['valid_ppl']:.2f}", f"{ptb['test_ppl']:.2f}"]
    assert row("train ppl")[1:] == [f"{e['train_ppl']:.1f}" for e in ptb["epochs"]]
    assert row("valid ppl")[1:] == [f"{e['valid_ppl']:.1f}" for e in ptb["epochs"]]
    auto = record("ptb-small-auto.json")
    cells = row("this toolkit, 13 epochs, --mixed-precision auto (bf16 on the Xeon)")
    assert cells[1:3] == [f"{auto['valid_ppl']:.2f}", f"{auto['test_ppl']:.2f}"] and auto["mixed_precision"] == "bf16"
    same_machine = record("ptb-small-fp32-avx512.json")
    cells = row("this toolkit, 13 epochs, fp32 on the Xeon")
    assert cells[1:3] == [f"{same_machine['valid_ppl']:.2f}", f"{same_machine['test_ppl']:.2f}"]
    assert same_machine["mixed_precision"] == "no" and same_machine["speed"]["cpu_capability"] == "AVX512"
    assert abs(auto["test_ppl"] - same_machine["test_ppl"]) <= 0.5  # issue 13: bf16 within 0.5 of fp32
    epyc_auto, epyc_fp32 = record("ptb-small-auto-epyc-fused.json"), record("ptb-small-fp32-epyc.json")
    assert row("this toolkit, 13 epochs, --mixed-precision auto (bf16 on the AVX-512 EPYC)")[1:3] == [
        f"{epyc_auto['valid_ppl']:.2f}", f"{epyc_auto['test_ppl']:.2f}"] and epyc_auto["mixed_precision"] == "bf16"
    assert row("this toolkit, 13 epochs, fp32 on the AVX-512 EPYC")[1:3] == [
        f"{epyc_fp32['valid_ppl']:.2f}", f"{epyc_fp32['test_ppl']:.2f}"] and epyc_fp32["mixed_precision"] == "no"
    assert epyc_fp32["speed"]["fp32_gemm"] == "onednn"  # as seq2seq.gemm chooses on that CPU
    assert abs(epyc_auto["test_ppl"] - epyc_fp32["test_ppl"]) <= 0.5 and epyc_auto["test_ppl"] <= 116



def test_sparse_embedding_rerun_is_the_fp32_record():
    """seq2seq.sparse_grad changes no bit of training: its full run repeats the fp32 record epoch by epoch."""
    dense, sparse = record("ptb-small-fp32-avx512.json"), record("ptb-small-fp32-avx512-sparse.json")
    assert [(e["train_ppl"], e["valid_ppl"]) for e in sparse["epochs"]] == [
        (e["train_ppl"], e["valid_ppl"]) for e in dense["epochs"]]
    assert sparse["test_ppl"] == dense["test_ppl"] and repr(sparse["test_ppl"]) in README

def test_onednn_transposes_rerun_is_the_epyc_fp32_record():
    """seq2seq.gemm's transposes (dW = dY^T X the other way round, the tiled kernel) change no bit: the full PTB small
    fp32 run on the EPYC repeats that CPU's fp32 record epoch by epoch, and the README says so."""
    before, after = record("ptb-small-fp32-epyc.json"), record("ptb-small-fp32-epyc-transposes.json")
    assert before["speed"]["fp32_gemm"] == after["speed"]["fp32_gemm"] == "onednn"
    assert [(e["train_ppl"], e["valid_ppl"]) for e in after["epochs"]] == [
        (e["train_ppl"], e["valid_ppl"]) for e in before["epochs"]]
    assert after["test_ppl"] == before["test_ppl"] and "results/ptb-small-fp32-epyc-transposes.json" in README


def demo_rows() -> list[list[str]]:
    """The cells of every demo table row (bold marks and backticks removed) whose last cell names its record."""
    rows = []
    for line in README.splitlines():
        cells = [c.strip().replace("**", "").replace("`", "") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[-1].startswith("results/wmt14_enfr-demo-"):
            rows.append(cells)
    return rows


def test_demo_translation_rows_are_their_records():
    rows = demo_rows()
    for placement, seed, order, dev, bleu, chrf, name in rows:
        demo = record(name.removeprefix("results/"))
        assert seed == str(demo["seed"]) and dev == " / ".join(f"{r['bleu']:.2f}" for r in demo["dev"])
        assert [bleu, chrf] == [f"{demo['bleu']:.2f}", f"{demo['chrf']:.2f}"]
        assert ("pcg64" in name) == (order == "PCG64") and ("placement" in name) == placement.startswith("attentional")
    assert len(rows) == 8  # 2 placements x 2 seeds x 2 batch orders


@pytest.mark.parametrize("mode", ["none", "naive", "zaremba", "variational"])
def test_placement_ablation_rows_are_the_mean_and_spread_of_three_seeds(mode):
    runs = [record(f"ablation-{mode}-seed{seed}.json") for seed in (0, 1, 2)]
    best = [min(e["valid_ppl"] for e in r["epochs"]) for r in runs]
    epochs = sorted({min(r["epochs"], key=lambda e: e["valid_ppl"])["epoch"] for r in runs})
    span = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"
    cells = row(mode, "### Dropout placement")
    assert cells[2] == f"{mean_std(best)} ({span})"
    assert cells[3:6] == [mean_std([r["valid_ppl"] for r in runs]), mean_std([r["test_ppl"] for r in runs]),
                          mean_std([r["epochs"][-1]["train_ppl"] for r in runs])]
    assert {r["config"]["model"]["dropout_mode"] for r in runs} == {mode} and [r["seed"] for r in runs] == [0, 1, 2]


@pytest.mark.parametrize("first_cell, mode", [("zaremba p = 0.3", "zaremba"), ("none", "none")])
def test_timit_rows_are_the_mean_and_spread_of_three_seeds(first_cell, mode):
    runs = [record(f"timit-{mode}-seed{seed}.json") for seed in (0, 1, 2)]
    cells = row(first_cell, "### TIMIT-layout acoustic model")

    def spread(values, digits):
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    assert cells[1:5] == [spread([r["frame_accuracy"] for r in runs], 2), spread([r["per"] for r in runs], 2),
                          spread([max(d["dev_frame_accuracy"] for d in r["dev"]) for r in runs], 2),
                          spread([min(d["dev_loss"] for d in r["dev"]) for r in runs], 3)]
    assert {r["config"]["model"]["dropout_mode"] for r in runs} == {mode} and [r["seed"] for r in runs] == [0, 1, 2]


def breakdown_rows(text: str) -> list[list[str]]:
    """The README's breakdown table recomputed from `benchmarks/roofline.py --breakdown`'s printout: per workload
    and precision the step, the ceiling, the linear layers' products (in the step / cached / from memory), the
    LSTM kernels / their products, clipping + update, and the efficiencies "at most" and as profiled."""
    rows = []
    for block in re.split(r"\n(?=\S+ breakdown \()", text)[1:]:
        head = re.match(r"(\S+) breakdown \((\w+), profiled, \d+ steps\): ([\d.]+) ms a step; ceiling ([\d.]+) ms "
                        r"\(LSTM layers' products ([\d.]+), the other products ([\d.]+); those with operands from "
                        r"memory: ([\d.]+)\)", block)
        name, precision, step, ceiling, lstm_products, products, cold = head.groups()

        def kind(label: str) -> float:
            found = re.search(re.escape(label) + r"\s+([\d.]+) ms", block)
            return float(found.group(1)) if found else 0.0

        linear = kind("matrix products of linear layers and attention")
        lstm = kind("oneDNN LSTM layers (their products and cell)")
        update = float(re.search(r"clipping \+ update ([\d.]+) ms", block).group(1))
        rows.append([name, precision, step, ceiling, f"{linear:.1f} / {products} / {cold}", f"{lstm:.1f} / {lstm_products}",
                     f"{update:.1f}", f"{float(ceiling) / (linear + lstm + update):.0%}",
                     f"{float(ceiling) / float(step):.0%}"])
    return rows


def test_breakdown_table_is_the_benchmarks_printout():
    expected = breakdown_rows((ROOT / "results" / "bench-roofline-breakdown.txt").read_text(encoding="utf-8"))
    section = README[README.index("**Where a training step's time goes.**"):]
    table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
             if line.startswith("| ") and not line.startswith("| workload")]
    assert len(expected) == 8 and table[:len(expected)] == expected
