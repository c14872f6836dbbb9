"""The fast inference paths give what the plain computation gives.

``BertModel(..., cls_only=True)`` drops trailing padding, runs the last layer on
``[CLS]`` alone and folds cross-attention into the queries; ``Linear`` runs CPU
inference on oneDNN (bfloat16 with a packed weight); bfloat16 attention on a CPU takes
two matrix products. Each is checked against the plain path on random weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import RecordingLinearOp, tiny_config
from imagereward.models import layers
from imagereward.models.med import BertModel, unmasked_length


@pytest.fixture(scope="module")
def text_encoder() -> BertModel:
    torch.manual_seed(0)
    model = BertModel(tiny_config().text).eval()
    with torch.no_grad():
        for param in model.parameters():  # wide weights, so that a wrong path shows
            param.normal_(0.0, 0.2)
    return model


def _tokens(rows: int = 6, length: int = 12):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    for row, real in enumerate([5, 9, 7, 7, 3, 7][:rows]):
        mask[row, real:] = 0
    return ids * mask, mask


@pytest.mark.parametrize("images", [6, 3, 2, 1])
def test_cls_only_equals_the_first_position_of_the_full_pass(text_encoder, images):
    ids, mask = _tokens()
    image_tokens = torch.randn(images, 50, 32, generator=torch.Generator().manual_seed(images))
    with torch.no_grad():
        full = text_encoder(ids, mask, image_tokens)[:, 0]
        fast = text_encoder(ids, mask, image_tokens, cls_only=True)
    assert fast.shape == full.shape
    assert torch.allclose(fast, full, atol=2e-6), (fast - full).abs().max()


def test_cls_only_in_text_mode(text_encoder):
    ids, mask = _tokens()
    with torch.no_grad():
        full = text_encoder(ids, mask, mode="text")[:, 0]
        fast = text_encoder(ids, mask, mode="text", cls_only=True)
    assert torch.allclose(fast, full, atol=2e-6)


def test_folded_cross_attention_equals_projected_keys_and_values(text_encoder):
    attend = text_encoder.encoder.layer[0].crossattention.self
    x = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(2))
    context = torch.randn(3, 50, 32, generator=torch.Generator().manual_seed(3))
    assert attend.fold_pays(4, context) and not attend.fold_pays(200, context)
    with torch.no_grad():
        plain = attend(x, context, None)
        folded = attend.attend_folded(x, context)
    assert torch.allclose(folded, plain, atol=2e-6), (folded - plain).abs().max()


def test_unmasked_length_drops_only_columns_every_row_masks():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    assert unmasked_length(right) == 3
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert unmasked_length(left) == 5
    assert unmasked_length(torch.ones(2, 4, dtype=torch.long)) == 4
    assert unmasked_length(torch.zeros(2, 4, dtype=torch.long)) == 1


def test_linear_inference_matches_f_linear_and_keeps_gradients():
    torch.manual_seed(0)
    linear = layers.Linear(64, 48)
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        assert torch.allclose(linear(x), F.linear(x, linear.weight, linear.bias), atol=1e-5)
    y = linear(x.requires_grad_())  # with gradients: the autograd path
    y.sum().backward()
    assert linear.weight.grad is not None and x.grad is not None
    assert list(linear.state_dict()) == ["weight", "bias"]


def test_bf16_linear_uses_a_packed_weight_that_follows_the_parameter():
    torch.manual_seed(0)
    linear = layers.Linear(48, 64).bfloat16()  # widening: packed on AMX too
    x = torch.randn(2, 7, 48).bfloat16()

    def check() -> None:
        with torch.no_grad():
            got = linear(x)
        assert torch.equal(got, F.linear(x, linear.weight, linear.bias))

    check()
    # The packed path ran (where oneDNN takes bf16: AVX-512 or AVX-NE-CONVERT).
    assert (layers._PACKED in linear.__dict__) == layers._onednn_bf16_available()
    with torch.no_grad():
        linear.weight.mul_(-2.0)  # in-place update: the packed copy must be made again
    check()
    linear.load_state_dict({"weight": torch.randn(64, 48), "bias": torch.randn(64)})
    check()
    linear.float().bfloat16()  # new tensors
    check()
    assert list(linear.state_dict()) == ["weight", "bias"]
    assert layers._PACKED not in copy.deepcopy(linear).__dict__
    with torch.inference_mode():  # weights made here are inference tensors (no version)
        made_here = layers.Linear(48, 64).bfloat16()  # widening: packed on AMX too
        assert torch.equal(made_here(x), F.linear(x, made_here.weight, made_here.bias))


@pytest.mark.parametrize("amx", [False, True])
def test_bf16_narrowing_linear_runs_large_products_from_the_plain_weight_on_amx(amx, monkeypatch):
    """On AMX, products of ``PLAIN_WEIGHT_ROWS`` rows or more through a layer with more
    inputs than outputs run from the plain weight (faster there); smaller ones, widening
    layers, and every layer elsewhere use the packed copy. The results are the same."""
    monkeypatch.setattr(layers, "cpu_has_amx", lambda: amx)
    torch.manual_seed(0)
    small = torch.randn(3, 5, 64).bfloat16()
    large = torch.randn(2, layers.PLAIN_WEIGHT_ROWS // 2, 64).bfloat16()
    for features in (16, 256):  # narrowing, widening
        linear = layers.Linear(64, features).bfloat16()
        with torch.no_grad():
            assert torch.equal(linear(large), F.linear(large, linear.weight, linear.bias))
        packed = layers._onednn_bf16_available() and not (amx and features < 64)
        assert (layers._PACKED in linear.__dict__) == packed, (amx, features)
        with torch.no_grad():
            assert torch.equal(linear(small), F.linear(small, linear.weight, linear.bias))
        assert (layers._PACKED in linear.__dict__) == layers._onednn_bf16_available()


def test_bf16_linear_stays_on_f_linear_where_onednn_refuses_bf16(monkeypatch):
    monkeypatch.setattr(layers, "_onednn_bf16_available", lambda: False)  # an AVX2-only CPU
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", None)  # would raise there
    linear = layers.Linear(64, 48).bfloat16()
    x = torch.randn(2, 7, 64).bfloat16()
    with torch.no_grad():
        assert torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))
    assert layers._PACKED not in linear.__dict__


@pytest.mark.parametrize("amx", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_bf16_cpu_attention_matches_the_fused_kernel(masked, amx, monkeypatch):
    monkeypatch.setattr(layers, "cpu_has_amx", lambda: amx)  # AMX: the fused kernel itself
    generator = torch.Generator().manual_seed(4)
    query, key, value = (torch.randn(2, 3, 9, 16, generator=generator) for _ in range(3))
    mask = None
    if masked:
        mask = torch.zeros(2, 1, 1, 9)
        mask[0, ..., 6:] = -10000.0
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    with torch.no_grad():
        got = layers.attention(query.bfloat16(), key.bfloat16(), value.bfloat16(),
                               mask=None if mask is None else mask.bfloat16())
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected, atol=3e-2), (got.float() - expected).abs().max()


@pytest.mark.parametrize("amx", [False, True])
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_linear_gelu_and_residual_match_the_separate_operations(gelu, with_residual, amx, monkeypatch):
    """On AMX, bf16 GELU and residual additions run as oneDNN post-ops of the product
    (and in float32 with AVX-512)."""
    monkeypatch.setattr(layers, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(layers, "cpu_has_avx512", lambda: amx)
    torch.manual_seed(0)
    linear = layers.Linear(64, 48)
    x = torch.randn(2, 7, 64)
    residual = torch.randn(2, 7, 48) if with_residual else None
    expected = F.linear(x, linear.weight, linear.bias)
    expected = F.gelu(expected) if gelu else expected
    expected = expected if residual is None else expected + residual
    with torch.no_grad():
        got = linear(x, gelu=gelu, residual=residual)  # float32: the same operations
        assert torch.allclose(got, expected, atol=1e-5)
        linear.bfloat16()
        half = linear(x.bfloat16(), gelu=gelu,
                      residual=None if residual is None else residual.bfloat16())
    assert half.dtype == torch.bfloat16 and half.shape == expected.shape
    assert torch.allclose(half.float(), expected, atol=0.05, rtol=0.02), (half.float() - expected).abs().max()
    y = layers.Linear(64, 48)(x.requires_grad_(), gelu=gelu, residual=residual)  # autograd path
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.skipif(not layers._onednn_linear_available(), reason="no oneDNN linear op in this torch")
def test_float32_post_ops_on_avx512_are_bitwise_the_separate_operations(monkeypatch):
    """With AVX-512, float32 GELU and residual additions run inside oneDNN's product, and
    the results are bitwise those of the product followed by the separate operations (so
    float32 scores are what they were before)."""
    op = torch.ops.mkldnn._linear_pointwise
    recording = RecordingLinearOp(op)
    monkeypatch.setattr(layers, "cpu_has_avx512", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", recording)
    generator = torch.Generator().manual_seed(7)
    linear = layers.Linear(256, 1024)
    x = torch.randn(4, 33, 256, generator=generator) * 3  # GELU's whole range, tails included
    residual = torch.randn(4, 33, 1024, generator=generator)
    with torch.no_grad():
        product = op(x, linear.weight, linear.bias, "none", [], "")
        assert torch.equal(linear(x, gelu=True), F.gelu(product))
        assert torch.equal(linear(x, residual=residual), product + residual)
    assert recording.post_ops == ["gelu", "add"]
    monkeypatch.setattr(layers, "cpu_has_avx512", lambda: False)  # AVX2: separate operations
    recording.post_ops.clear()
    with torch.no_grad():
        assert torch.equal(linear(x, gelu=True), F.gelu(product))
        assert torch.equal(linear(x, residual=residual), product + residual)
    assert recording.post_ops == ["none", "none"]


@pytest.mark.parametrize("amx", [False, True])
def test_vit_block_in_bf16_follows_float32_with_and_without_fused_post_ops(amx, monkeypatch):
    from imagereward.config import VisionConfig
    from imagereward.models.vit import Block

    monkeypatch.setattr(layers, "cpu_has_amx", lambda: amx)
    torch.manual_seed(0)
    block = Block(VisionConfig(width=64, heads=4, depth=1), drop_path=0.1).eval()
    x = torch.randn(3, 11, 64)
    with torch.no_grad():
        expected = block(x)
        got = copy.deepcopy(block).bfloat16()(x.bfloat16()).float()
    scale = expected.abs().max()
    assert (got - expected).abs().max() < 0.03 * scale, (got - expected).abs().max()
    block.train()  # stochastic depth: the residuals are added outside the products
    torch.manual_seed(1)
    assert not torch.equal(block(x), expected)


@pytest.mark.parametrize("limit, allowed", [("AVX512_CORE_BF16", False), ("avx2", False),
                                            ("AVX512_CORE_AMX", True), ("ALL", True), ("", True)])
def test_amx_paths_follow_onednns_instruction_limit(limit, allowed, monkeypatch):
    """With oneDNN kept off AMX (ONEDNN_MAX_CPU_ISA), the paths that pay only on AMX stay off."""
    from pathlib import Path

    from imagereward import dtypes

    has_amx = "amx_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    dtypes.cpu_has_amx.cache_clear()
    try:
        assert dtypes.cpu_has_amx() == (allowed and has_amx)
    finally:
        monkeypatch.undo()
        dtypes.cpu_has_amx.cache_clear()


@pytest.mark.parametrize("limit, allowed", [("AVX2", False), ("avx2_vnni", False), ("SSE41", False),
                                            ("AVX512_CORE", True), ("AVX512_CORE_BF16", True),
                                            ("AVX10_1_512_AMX", True), ("ALL", True), ("", True)])
def test_float32_post_ops_follow_onednns_instruction_limit(limit, allowed, monkeypatch):
    """float32 post-ops pay with AVX-512 only: a limit below it keeps them off."""
    from pathlib import Path

    from imagereward import dtypes

    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    has_avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    dtypes.cpu_has_avx512.cache_clear()
    try:
        assert dtypes.cpu_has_avx512() == (allowed and has_avx512)
        assert layers.fuses_post_ops(torch.float32) == (allowed and has_avx512)
    finally:
        monkeypatch.undo()
        dtypes.cpu_has_avx512.cache_clear()


def test_mkl_product_scales_adds_bias_and_accumulates_the_residual():
    """``layers.mkl_product``: ``alpha * x W^T + bias``, with or without a bias, and with a
    residual as the product's accumulator, in the input's leading shape."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 5, 16, generator=generator)
    weight, bias = torch.randn(8, 16, generator=generator), torch.randn(8, generator=generator)
    residual = torch.randn(2, 5, 8, generator=generator)
    product = x @ weight.t()
    for alpha in (1.0, 1.702):
        assert torch.allclose(layers.mkl_product(x, weight, bias, alpha=alpha), alpha * product + bias, atol=1e-5)
        assert torch.allclose(layers.mkl_product(x, weight, None, alpha=alpha), alpha * product, atol=1e-5)
        got = layers.mkl_product(x, weight, bias, alpha=alpha, residual=residual)
        assert got.shape == residual.shape
        assert torch.allclose(got, alpha * product + bias + residual, atol=1e-5)
        assert torch.allclose(layers.mkl_product(x, weight, None, alpha=alpha, residual=residual),
                              alpha * product + residual, atol=1e-5)


@pytest.mark.skipif(not layers._onednn_linear_available(), reason="no oneDNN linear op in this torch")
@pytest.mark.parametrize("amx", [False, True])
def test_large_float32_products_run_through_mkl_on_amx(amx, monkeypatch):
    """On AMX, float32 inference products of ``MKL_FLOAT32_ROWS`` rows or more take ATen's
    path (MKL: faster there), GELU as its own operation and the residual as the product's
    accumulator; smaller products, and every product elsewhere, stay on oneDNN."""
    recording = RecordingLinearOp(torch.ops.mkldnn._linear_pointwise)
    monkeypatch.setattr(layers, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(layers, "cpu_has_avx512", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", recording)
    generator = torch.Generator().manual_seed(3)
    linear = layers.Linear(64, 48)
    for rows in (layers.MKL_FLOAT32_ROWS - 2, layers.MKL_FLOAT32_ROWS):
        x = torch.randn(2, rows // 2, 64, generator=generator)
        residual = torch.randn(2, rows // 2, 48, generator=generator)
        recording.post_ops.clear()
        with torch.no_grad():
            product = F.linear(x, linear.weight, linear.bias)
            got = {"plain": linear(x), "gelu": linear(x, gelu=True), "residual": linear(x, residual=residual)}
        assert torch.allclose(got["plain"], product, atol=1e-5)
        assert torch.allclose(got["gelu"], F.gelu(product), atol=1e-5)
        assert torch.allclose(got["residual"], product + residual, atol=1e-5)
        on_mkl = amx and rows >= layers.MKL_FLOAT32_ROWS
        assert recording.post_ops == ([] if on_mkl else ["none", "gelu", "add"]), (amx, rows)
        if on_mkl:  # MKL's own product, bitwise; the residual accumulated by it
            accumulated = torch.addmm(residual.reshape(-1, 48), x.reshape(-1, 64), linear.weight.t())
            assert torch.equal(got["plain"], product) and torch.equal(got["gelu"], F.gelu(product))
            assert torch.equal(got["residual"], (accumulated + linear.bias).view(2, rows // 2, 48))
    if amx:  # under CPU autocast the product stays oneDNN's, in float32, as before
        x = torch.randn(2, layers.MKL_FLOAT32_ROWS, 64, generator=generator)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert linear(x).dtype == torch.float32
        assert recording.post_ops[-1] == "none"
    if layers._onednn_bf16_available():  # bfloat16 never takes this path
        with torch.no_grad():
            linear.bfloat16()(torch.randn(2, layers.MKL_FLOAT32_ROWS, 64).bfloat16())
        assert recording.post_ops[-1] == "none"
