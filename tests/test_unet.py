import pytest
import torch
from einops import rearrange

from diffuse_edu.models.attention import CrossAttention, SelfAttention, multi_head_attention
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.unet import UNet, UNetConfig


@pytest.mark.parametrize("cfg, shape", [
    (UNetConfig(), (2, 1, 16, 16)),
    (UNetConfig(), (2, 1, 32, 24)),  # not square
    (UNetConfig(in_channels=3, channels=(32, 64, 128), blocks_per_level=2), (2, 3, 32, 32)),
    (UNetConfig(channels=(8, 16), attention_levels=(0, 1), groups=4, heads=2), (3, 1, 8, 8)),
    (UNetConfig(in_channels=4, out_channels=8, channels=(16, 32, 64, 64)), (1, 4, 16, 16)),
    (UNetConfig(skip_connections=False), (2, 1, 16, 16)),
    (UNetConfig(time_embedding=False), (2, 1, 16, 16)),
])
def test_unet_maps_images_to_images(cfg, shape):
    model = UNet(cfg)
    out = model(torch.randn(shape), torch.randint(0, 1000, (shape[0],)))
    assert out.shape == (shape[0], cfg.out_channels or cfg.in_channels, *shape[2:])


def test_unet_rejects_bad_input_with_a_clear_message():
    model = UNet(UNetConfig())
    with pytest.raises(ValueError, match="expects images of shape \\(B, 1, H, W\\)"):
        model(torch.randn(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(2, 1, 18, 18), torch.zeros(2, dtype=torch.long))


def _explicit_attention(q, k, v, heads):
    out = []
    for h in range(heads):
        d = q.shape[-1] // heads
        qs, ks, vs = (z[..., h * d:(h + 1) * d] for z in (q, k, v))
        out.append(torch.softmax(qs @ ks.transpose(-1, -2) / d**0.5, dim=-1) @ vs)
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
def test_attention_matches_the_formula(heads):
    g = torch.Generator().manual_seed(heads)
    q, k, v = (torch.randn(2, 5, 8, generator=g), torch.randn(2, 7, 8, generator=g),
               torch.randn(2, 7, 8, generator=g))
    torch.testing.assert_close(multi_head_attention(q, k, v, heads),
                               _explicit_attention(q, k, v, heads))


def test_attention_mask_hides_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, 4, generator=g), torch.randn(1, 5, 4, generator=g),
               torch.randn(1, 5, 4, generator=g))
    mask = torch.tensor([[True, True, False, False, False]])
    torch.testing.assert_close(multi_head_attention(q, k, v, 2, mask),
                               multi_head_attention(q, k[:, :2], v[:, :2], 2))


def test_attention_rejects_uneven_heads():
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        multi_head_attention(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), 3)


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))


def test_self_attention_is_permutation_equivariant_over_positions():
    block = SelfAttention(16, heads=4, groups=4)
    _perturb(block)  # the output projection starts at zero: make the block do something
    x = torch.randn(2, 16, 4, 4)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))

    def shuffle(z):
        return rearrange(rearrange(z, "b c h w -> b c (h w)")[..., perm], "b c (h w) -> b c h w",
                         h=4)
    torch.testing.assert_close(block(shuffle(x)), shuffle(block(x)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(block(x), x)


def test_cross_attention_reads_the_context():
    block = CrossAttention(8, context_dim=6, heads=2, groups=2)
    _perturb(block)
    x, ctx = torch.randn(1, 8, 2, 2), torch.randn(1, 3, 6)
    assert not torch.allclose(block(x, ctx), block(x, ctx.flip(-1)))
    # the output does not depend on the order of the context tokens
    torch.testing.assert_close(block(x, ctx), block(x, ctx[:, [2, 0, 1]]), rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet(UNetConfig(num_classes=3, context_dim=5, channels=(8, 16), attention_levels=(1,),
                            groups=4, heads=2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t = torch.randn(4, 1, 8, 8), torch.randint(1, 1000, (4,))
    cond = Cond(labels=torch.tensor([0, 1, 2, 3]), context=torch.randn(4, 2, 5))
    for _ in range(2):  # the zero-initialised projections pass gradients on after one step
        opt.zero_grad()
        model(x, t, cond).pow(2).mean().backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"no gradient reaches {dead}"


def test_time_embedding_changes_the_output_only_when_enabled():
    x = torch.randn(2, 1, 16, 16)
    for enabled in (True, False):
        torch.manual_seed(0)
        model = UNet(UNetConfig(time_embedding=enabled))
        _perturb(model)
        a, b = model(x, torch.tensor([1, 1])), model(x, torch.tensor([900, 900]))
        assert torch.allclose(a, b) != enabled


def test_label_none_means_the_null_class():
    torch.manual_seed(0)
    model = UNet(UNetConfig(num_classes=10))
    _perturb(model)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 5])
    torch.testing.assert_close(model(x, t), model(x, t, Cond(labels=torch.tensor([10, 10]))))
    assert not torch.allclose(model(x, t), model(x, t, Cond(labels=torch.tensor([3, 3]))))


def test_use_pieces_runs_a_learners_functions_in_every_module_of_their_kind():
    from diffuse_edu.models.attention import attention_block
    from diffuse_edu.models.time_embedding import scale_shift
    from diffuse_edu.models.unet import residual_block, unet_forward, use_pieces

    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16, 32), attention_levels=(2,), groups=4)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 900])
    seen = []

    def spy(name, fn):
        def wrapped(*args):
            seen.append(name)
            return fn(*args)
        return wrapped

    with torch.no_grad():
        before = net(x, t)
        counts = use_pieces(net, forward=spy("forward", unet_forward),
                            residual_block=spy("res", residual_block),
                            attention_block=spy("attn", attention_block),
                            scale_shift=spy("mod", scale_shift),
                            attention=spy("mha", multi_head_attention))
        after = net(x, t)
    assert torch.equal(before, after)
    assert (counts
            == {"forward": 1, "residual_block": 6, "attention_block": 2, "scale_shift": 6,
                "attention": 2})
    assert ({n: seen.count(n) for n in set(seen)}
            == {"forward": 1, "res": 6, "attn": 2, "mod": 6, "mha": 2})


@pytest.mark.parametrize("n", [1, 2])
def test_the_decoder_has_as_many_blocks_per_level_as_the_encoder_and_none_at_the_bottom(n):
    """UNetConfig.blocks_per_level's comment (it said the decoder had one more)."""
    from diffuse_edu.models.unet import ResBlock

    net = UNet(UNetConfig(channels=(8, 16, 32), blocks_per_level=n, attention_levels=(), groups=4))

    def blocks(stages):
        return sum(isinstance(m, ResBlock) for m in stages.modules())
    assert [blocks(level) for level in net.encoder] == [n, n, n]
    assert [blocks(level) for level in net.decoder] == [n, n]  # levels 0 and 1; the middle at 2
    assert blocks(net.middle) == 1
