"""The same model code on a GPU: tests marked `cuda` run where CUDA is available and are reported as skipped
elsewhere; each is also run on the CPU (the same function, device "cpu"), so its code is exercised on every
machine. benchmarks/gpu_check.sh runs the cuda ones with the GPU figures."""

import json
import subprocess
import sys

import pytest
import torch
from lstm_reference import reference_stacked_lstm, weights_of
from recipe_runs import recipe_args, run

from seq2seq.acoustic_model import AcousticModel, AcousticModelConfig
from seq2seq.language_model import LanguageModel, LanguageModelConfig
from seq2seq.lstm import StackedLSTM
from seq2seq.translator import Translator, TranslatorConfig, decoder_step

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["zaremba", "none"])
def test_fused_kernel_equals_the_step_loop(device, mode):
    """The fused LSTM (cuDNN on a GPU, oneDNN on a CPU) against one step at a time over the same weights."""
    torch.manual_seed(0)
    lstm = StackedLSTM(12, 16, 3, dropout=0.3, dropout_mode=mode).to(device).eval()
    x = torch.randn(9, 4, 12, device=device)
    fused, (h, c) = lstm(x)  # (T, B, H)
    state = (torch.zeros(3, 4, 16, device=device), torch.zeros(3, 4, 16, device=device))
    steps = []
    for t in range(9):
        top, state = decoder_step(lstm, x[t], state)
        steps.append(top)
    torch.testing.assert_close(torch.stack(steps), fused, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state[0], h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state[1], c, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["variational", "naive"])
def test_step_loop_recurrence_equals_the_equations(device, mode):
    """The step-loop placements' recurrence (seq2seq.recurrence, backward written out) on the device: outputs and
    every parameter's gradient equal autograd through the from-the-equations LSTM, with padded lengths too."""
    torch.manual_seed(0)
    lstm = StackedLSTM(12, 16, 2, dropout=0.4, dropout_mode=mode).to(device)
    x = torch.randn(9, 4, 12, device=device)
    state = (torch.randn(2, 4, 16, device=device), torch.randn(2, 4, 16, device=device))
    masks = lstm.sample_masks(9, 4, device=device)
    y, (h, c) = lstm(x, state, masks)
    grads = torch.autograd.grad(y.square().sum() + c.sum(), list(lstm.parameters()))
    y_ref, _, c_ref = reference_stacked_lstm(x, weights_of(lstm), *state, input_masks=masks.inputs,
                                             recurrent_masks=masks.recurrent, output_mask=masks.output)
    grads_ref = torch.autograd.grad(y_ref.square().sum() + c_ref.sum(), list(lstm.parameters()))
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4)
    lengths = torch.tensor([9, 4, 1, 7], device=device)
    y, (h, c) = lstm(x, state, masks, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):  # each sequence alone, unpadded, gives its own outputs and state
        alone = lstm(x[:n, b:b + 1], tuple(s[:, b:b + 1] for s in state), sequence_masks(masks, b, n))
        torch.testing.assert_close(y[:n, b], alone[0][:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h[:, b], alone[1][0][:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c[:, b], alone[1][1][:, 0], rtol=1e-5, atol=1e-6)


def sequence_masks(masks, b: int, n: int):
    """Sequence b's masks over its first n steps, as a batch of one."""
    def one(mask):
        return mask[:n, b:b + 1] if mask.shape[0] > 1 else mask[:, b:b + 1]

    return type(masks)(tuple(map(one, masks.inputs)), None if masks.output is None else one(masks.output),
                       None if masks.recurrent is None else tuple(map(one, masks.recurrent)))


def one_step_losses(name: str, device: str, dtype: torch.dtype) -> tuple[float, bool]:
    """The loss of one training step of a small model under autocast(dtype) and whether every gradient is finite."""
    torch.manual_seed(0)
    with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
        if name.startswith("language_model"):  # language_model_variational: the step loop (seq2seq.recurrence)
            mode, p = ("variational", 0.3) if name.endswith("variational") else ("zaremba", 0.0)
            model = LanguageModel(LanguageModelConfig(vocab_size=50, hidden_size=32, num_layers=2, dropout=p,
                                                      dropout_mode=mode)).to(device)
            tokens = torch.randint(0, 50, (11, 4), device=device)
            loss, _ = model(tokens[:-1], None, tokens[1:])
        elif name == "translator":
            model = Translator(TranslatorConfig(src_vocab_size=40, tgt_vocab_size=40, embedding_size=32, hidden_size=32,
                                                num_layers=2, dropout=0.0, attention=True)).to(device)
            src, tgt = torch.randint(4, 40, (7, 4), device=device), torch.randint(4, 40, (6, 4), device=device)
            loss, _ = model(src, torch.full((4,), 7, device=device), tgt[:-1], tgt[1:])
        else:
            model = AcousticModel(AcousticModelConfig(input_size=8, hidden_size=16, num_layers=2, dropout=0.0)).to(device)
            lengths = torch.full((3,), 20, device=device)
            logits = model(torch.randn(20, 3, 8, device=device), lengths)
            loss, _ = model.loss(logits, lengths, torch.randint(0, 48, (20, 3), device=device), None, None)
    loss.float().backward()
    return loss.item(), all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["language_model", "language_model_variational", "translator", "acoustic_model"])
@pytest.mark.parametrize("device, dtype", [("cpu", torch.bfloat16),
                                           pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
                                           pytest.param("cuda", torch.float16, marks=pytest.mark.cuda)])
def test_low_precision_training_step_is_finite_and_close_to_fp32(name, device, dtype):
    if device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bf16 instructions")
    reference, _ = one_step_losses(name, device, torch.float32)
    loss, finite = one_step_losses(name, device, dtype)
    assert finite and loss == pytest.approx(reference, rel=3e-2)


def demo_shaped_model_dir(tmp_path):
    """A demo-shaped translator with random weights and the bundled tokenizers, as a model directory."""
    import dataclasses

    from seq2seq.model_dir import save_translator
    from seq2seq.presets import translation_demo
    from seq2seq.tokenizer import Tokenizer

    preset = translation_demo()
    src_tok, tgt_tok = (Tokenizer(f"tokenizers/multi30k/{lang}.model") for lang in ("en", "fr"))
    config = dataclasses.replace(preset.model, src_vocab_size=len(src_tok), tgt_vocab_size=len(tgt_tok))
    torch.manual_seed(0)
    save_translator(tmp_path / "demo", Translator(config), dataclasses.replace(preset, model=config), src_tok, tgt_tok)
    return tmp_path / "demo"


@pytest.mark.parametrize("device", DEVICES)
def test_cli_on_a_device_equals_the_cpu_and_is_batch_invariant(device, tmp_path, monkeypatch):
    """In fp32: in bf16 (the default where served) a batch's padding and GEMM path round differently."""
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[1])
    model = demo_shaped_model_dir(tmp_path)
    lines = "A man rides a bike.\nTwo dogs play in the snow.\nA woman is reading a book on a bench.\n" * 3

    def translate(*flags):
        done = subprocess.run([sys.executable, "-m", "seq2seq.translate", "--model", str(model), "--beam-size", "3",
                               "--max-len-b", "4", "--dtype", "fp32", *flags], input=lines, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    on_device = translate("--device", device)
    assert on_device == translate("--device", "cpu")
    assert translate("--device", device, "--batch-size", "1") == on_device


@pytest.mark.cuda
@pytest.mark.parametrize("recipe", ["ptb_lm", "wmt14_enfr", "timit_am"])
def test_tiny_recipes_run_on_cuda(recipe, tmp_path):
    done = run(recipe_args(recipe, tmp_path / "data") + ["--output-dir", str(tmp_path / "out"), "--max-steps", "6"],
               CUDA_VISIBLE_DEVICES="0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on cuda" in done.stdout + done.stderr
    assert json.loads((tmp_path / "out" / "results.json").read_text())["num_processes"] == 1
