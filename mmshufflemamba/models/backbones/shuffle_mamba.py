"""Plain Vision Mamba (Vim) backbone trained with stochastic layer-wise shuffle.

ShuffleMamba: "Stochastic Layer-Wise Shuffle: A Good Practice to Improve Vision Mamba
Training" (arXiv 2408.17081), on the Vim architecture ("Vision Mamba", arXiv 2401.09417).
With ``shuffle_rate=0`` (or in eval mode) the model is exactly the plain Vim.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmshufflemamba.registry import MODELS
from ..layers import LayerwiseShuffle, MambaBlock, SimplePyramid, build_norm
from ..layers.block import DropPath
from ..utils import resize_pos_embed

__all__ = ['ShuffleMamba']

OUT_TYPES = ('raw', 'cls_token', 'featmap', 'avg_featmap')
CLS_TOKEN_LAYOUTS = ('head', 'middle', None)


class TokenLayout:
    """Where the class token, the registers and the patches sit in the sequence.

    The sequence is first ``patches`` with the class token at index 0 (``'head'``) or at
    ``num_patches // 2`` (``'middle'``, Vim); then ``num_registers`` register tokens are
    interleaved evenly: register ``j`` goes to index ``int((j + 0.5) * T / k)`` of the
    final length-``T`` sequence.

    Attributes:
        order: ``(T,)`` indices into ``cat([patches, cls, registers], dim=1)``.
        cls_index: Index of the class token, or None.
        register_index: ``(k,)`` indices of the registers.
        patch_index: ``(M,)`` indices of the patches, in raster order.
    """

    def __init__(self, num_patches: int, cls_token: Optional[str], num_registers: int):
        M = num_patches
        base = list(range(M))
        if cls_token == 'head':
            base = [M] + base
        elif cls_token == 'middle':
            base = base[:M // 2] + [M] + base[M // 2:]
        num_cls = int(cls_token is not None)
        total = len(base) + num_registers
        reg_positions = {int((j + 0.5) * total / num_registers): j
                         for j in range(num_registers)}
        order, it = [], iter(base)
        for pos in range(total):
            order.append(M + num_cls + reg_positions[pos] if pos in reg_positions else next(it))
        self.order = torch.tensor(order)
        self.cls_index = order.index(M) if cls_token is not None else None
        self.register_index = torch.tensor(sorted(reg_positions), dtype=torch.long)
        self.patch_index = torch.tensor([i for i, o in enumerate(order) if o < M])


@MODELS.register_module()
class ShuffleMamba(BaseModule):
    """Plain bidirectional Mamba backbone (Vim) with stochastic layer-wise shuffle.

    Args:
        arch: A name of :attr:`arch_zoo` (``tiny``/``small``/``middle``/``base``/``large``,
            or their first letter), or a dict with ``embed_dims`` and ``num_layers``.
        img_size: Input size the position embedding is stored for. Other sizes (whose
            sides are multiples of ``patch_size``) are handled by bicubic resizing.
        patch_size: Patch size and stride of the patch embedding.
        in_channels: Image channels.
        out_indices: Blocks whose output is returned; negative values count from the end.
        out_type: ``'raw'`` (all tokens ``(B, T, C)``), ``'cls_token'`` (``(B, C)``),
            ``'featmap'`` (patch tokens ``(B, C, H/p, W/p)``) or ``'avg_featmap'``
            (mean of patch tokens ``(B, C)``), as in mmpretrain.
        cls_token: ``'head'``, ``'middle'`` (Vim) or None (no class token).
        num_registers: Register tokens (Mamba-Reg), interleaved evenly.
        shuffle_rate: Shuffle probability of the last layer (``p_i = rate * i / (L-1)``).
        drop_path_rate: Stochastic depth; block ``i`` gets ``linspace(0, rate, L)[i - 1]``
            and the final add ``rate`` (Vim's schedule).
        drop_rate: Dropout after adding the position embedding.
        norm_type: ``'RMSNorm'`` (Vim) or ``'LN'``.
        norm_eps: Norm epsilon.
        residual_in_fp32: Keep the residual stream in float32.
        final_norm: Apply ``norm_f`` to the output of the last block.
        frozen_stages: Freeze the embeddings and the first ``frozen_stages`` blocks
            (``-1``: nothing).
        with_cp: Activation checkpointing in every block.
        mixer_cfg: Extra arguments of :class:`BiMambaMixer` (``d_state``, ``expand``, ...).
        out_scales: For dense prediction: resample the ``featmap`` outputs into a
            pyramid, output ``k`` by ``out_scales[k]`` (``(4, 2, 1, 0.5)`` gives strides
            4/8/16/32 for patch size 16). Either one map per scale (``out_indices`` of the
            same length, as BEiT) or one map for all scales (a single index, as ViTDet).
            None: no pyramid (classification).
        pyramid_norm: Norm inside the pyramid's upsamplers: ``'LN2d'`` (default; works on
            one process), ``'GN'``, ``'BN'`` or ``'SyncBN'``.
        interpolate_mode: Mode for resizing the position embedding.
        init_cfg: mmengine init config (e.g. ``dict(type='Pretrained', checkpoint=...)``).
    """
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['t', 'tiny'], {'embed_dims': 192, 'num_layers': 24}),
        **dict.fromkeys(['s', 'small'], {'embed_dims': 384, 'num_layers': 24}),
        **dict.fromkeys(['m', 'middle'], {'embed_dims': 576, 'num_layers': 32}),
        **dict.fromkeys(['b', 'base'], {'embed_dims': 768, 'num_layers': 24}),
        **dict.fromkeys(['l', 'large'], {'embed_dims': 1024, 'num_layers': 48}),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_type: str = 'cls_token',
                 cls_token: Optional[str] = 'head',
                 num_registers: int = 0,
                 shuffle_rate: float = 0.0,
                 drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0,
                 norm_type: str = 'RMSNorm',
                 norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True,
                 final_norm: bool = True,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 mixer_cfg: Optional[dict] = None,
                 out_scales: Optional[Sequence[float]] = None,
                 pyramid_norm: str = 'LN2d',
                 interpolate_mode: str = 'bicubic',
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._parse_arch(arch)
        self.embed_dims = self.arch_settings['embed_dims']
        self.num_layers = self.arch_settings['num_layers']
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        for side in self.img_size:
            self._check_side(side, 'img_size')

        if cls_token not in CLS_TOKEN_LAYOUTS:
            raise ValueError(f'cls_token must be one of {CLS_TOKEN_LAYOUTS}; got {cls_token!r}.')
        if out_type not in OUT_TYPES:
            raise ValueError(f'out_type must be one of {OUT_TYPES}; got {out_type!r}.')
        if out_type == 'cls_token' and cls_token is None:
            raise ValueError("out_type='cls_token' needs a class token: set cls_token to "
                             "'head' or 'middle', or use out_type='avg_featmap'.")
        if num_registers < 0:
            raise ValueError(f'num_registers must be >= 0; got {num_registers}.')
        self.cls_token_layout = cls_token
        self.num_registers = num_registers
        self.out_type = out_type
        self.interpolate_mode = interpolate_mode
        self.out_indices = self._parse_out_indices(out_indices)
        self.final_norm = final_norm
        self.frozen_stages = frozen_stages

        C = self.embed_dims
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, C, patch_size, stride=patch_size)
        self.patch_resolution = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        num_cls = int(cls_token is not None)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_cls + self._num_patches(
            self.patch_resolution), C))
        if cls_token is not None:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        if num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, C))
            self.pos_embed_reg = nn.Parameter(torch.zeros(1, num_registers, C))
        self.pos_drop = nn.Dropout(drop_rate)

        self.shuffle = LayerwiseShuffle(self.num_layers, shuffle_rate)
        dpr = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        self.layers = nn.ModuleList([
            MambaBlock(
                C,
                norm_type=norm_type,
                norm_eps=norm_eps,
                drop_path_rate=([0.0] + dpr)[i],
                residual_in_fp32=residual_in_fp32,
                mixer_cfg=mixer_cfg,
                with_cp=with_cp) for i in range(self.num_layers)
        ])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = build_norm(norm_type, C, norm_eps) if final_norm else nn.Identity()
        self._layouts: Dict[int, TokenLayout] = {}
        self.pyramid = self._build_pyramid(out_scales, pyramid_norm)

        self._init_mamba_weights()
        self._register_load_state_dict_pre_hook(self._prepare_pos_embed)
        self._freeze_stages()

    # ----------------------------------------------------------------- construction
    def _parse_arch(self, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in self.arch_zoo:
                raise ValueError(f'Unknown arch {arch!r}; choose from '
                                 f'{sorted(set(self.arch_zoo))} or pass a dict.')
            return dict(self.arch_zoo[key])
        missing = {'embed_dims', 'num_layers'} - set(arch)
        if missing:
            raise ValueError(f'A custom arch dict needs the keys {sorted(missing)}.')
        return dict(arch)

    def _parse_out_indices(self, out_indices: Union[int, Sequence[int]]) -> List[int]:
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if not indices:
            raise ValueError('out_indices must name at least one block.')
        parsed = []
        for index in indices:
            if not -self.num_layers <= index < self.num_layers:
                raise ValueError(f'out_indices {index} is outside the depth: this backbone '
                                 f'has {self.num_layers} blocks (valid: '
                                 f'{-self.num_layers}..{self.num_layers - 1}).')
            parsed.append(index % self.num_layers)
        return sorted(set(parsed))

    def _build_pyramid(self, out_scales: Optional[Sequence[float]],
                       norm_type: str) -> Optional[SimplePyramid]:
        if out_scales is None:
            return None
        if self.out_type != 'featmap':
            raise ValueError(f"out_scales needs out_type='featmap'; got {self.out_type!r}.")
        if len(self.out_indices) not in (1, len(out_scales)):
            raise ValueError(f'out_scales {tuple(out_scales)} needs one out_indices entry '
                             f'per scale or a single one; got {self.out_indices}.')
        return SimplePyramid(self.embed_dims, out_scales, norm_type)

    def _check_side(self, side: int, what: str) -> None:
        if side % self.patch_size:
            raise ValueError(
                f'{what} side {side} is not a multiple of the patch size {self.patch_size}. '
                f'Resize or pad the input to a multiple of {self.patch_size} (for example '
                f'with the pipeline\'s Pad transform, size_divisor={self.patch_size}).')

    @staticmethod
    def _num_patches(resolution: Tuple[int, int]) -> int:
        return resolution[0] * resolution[1]

    def _init_mamba_weights(self) -> None:
        """Vim's initialisation (trunc-normal embeddings, lecun conv, rescaled out_proj)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for name in ('cls_token', 'register_tokens', 'pos_embed_reg'):
            if hasattr(self, name):
                nn.init.trunc_normal_(getattr(self, name), std=0.02)
        proj = self.patch_embed.proj
        fan_in = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
        # lecun normal: truncated normal with variance 1/fan_in (0.8796 corrects truncation)
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)
        nn.init.zeros_(proj.bias)
        for module in self.layers.modules():
            if isinstance(module, nn.Linear) and module.bias is not None \
                    and not getattr(module.bias, '_no_reinit', False):
                nn.init.zeros_(module.bias)
        for layer in self.layers:
            # GPT-2 style: scale the residual branch's output projection by 1/sqrt(depth)
            weight = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            with torch.no_grad():
                weight /= math.sqrt(self.num_layers)

    def init_weights(self) -> None:
        """Weights are initialised at construction; a ``Pretrained`` init_cfg loads over them."""
        super().init_weights()

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        if self.frozen_stages > self.num_layers:
            raise ValueError(f'frozen_stages={self.frozen_stages} exceeds the depth '
                             f'{self.num_layers}.')
        frozen: List[nn.Module] = [self.patch_embed, self.pos_drop]
        frozen += list(self.layers[:self.frozen_stages])
        if self.frozen_stages == self.num_layers:
            frozen += [self.norm_f]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
        for name in ('pos_embed', 'cls_token', 'register_tokens', 'pos_embed_reg'):
            if hasattr(self, name):
                getattr(self, name).requires_grad = False

    def train(self, mode: bool = True) -> 'ShuffleMamba':
        super().train(mode)
        self._freeze_stages()
        return self

    # ---------------------------------------------------------------- optimiser info
    def no_weight_decay(self) -> set:
        """Names of parameters that take no weight decay (besides ``_no_weight_decay`` ones)."""
        return {'pos_embed', 'cls_token', 'register_tokens', 'pos_embed_reg'}

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer depth of a parameter for layer-wise lr decay (mmpretrain's convention).

        Embeddings are depth 0, block ``i`` is ``i + 1``, everything else (final norm,
        heads) ``num_layers + 1``.

        Returns:
            ``(layer_depth, num_layers + 2)``.
        """
        num_layers = self.num_layers + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name in ('cls_token', 'pos_embed', 'register_tokens', 'pos_embed_reg') \
                or name.startswith('patch_embed'):
            return 0, num_layers
        if name.startswith('layers.'):
            return int(name.split('.')[1]) + 1, num_layers
        return num_layers - 1, num_layers

    # ------------------------------------------------------------ position embedding
    @property
    def num_extra_tokens(self) -> int:
        """Slots of the stored ``pos_embed`` that are not patches (the class token)."""
        return int(self.cls_token_layout is not None)

    def _cls_slot(self, num_patches: int) -> Optional[int]:
        if self.cls_token_layout is None:
            return None
        return 0 if self.cls_token_layout == 'head' else num_patches // 2

    def _split_pos_embed(self, pos_embed: Tensor,
                         num_patches: int) -> Tuple[Optional[Tensor], Tensor]:
        """``(1, n, C)`` -> (class-token slot ``(1, 1, C)`` or None, patch part ``(1, M, C)``)."""
        slot = self._cls_slot(num_patches)
        if slot is None:
            return None, pos_embed
        patches = torch.cat([pos_embed[:, :slot], pos_embed[:, slot + 1:]], dim=1)
        return pos_embed[:, slot:slot + 1], patches

    def _patch_pos_embed(self, resolution: Tuple[int, int]) -> Tuple[Optional[Tensor], Tensor]:
        """Class slot and patch position embedding resized to ``resolution``."""
        cls_pos, patch_pos = self._split_pos_embed(self.pos_embed,
                                                   self._num_patches(self.patch_resolution))
        if resolution != self.patch_resolution:
            patch_pos = resize_pos_embed(patch_pos, self.patch_resolution, resolution,
                                         self.interpolate_mode)
        return cls_pos, patch_pos

    def _prepare_pos_embed(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Load-time hook: resize a checkpoint's ``pos_embed`` of another grid to ours."""
        name = prefix + 'pos_embed'
        if name not in state_dict or state_dict[name].shape == self.pos_embed.shape:
            return
        ckpt = state_dict[name]
        num_src = ckpt.shape[1] - self.num_extra_tokens
        side = int(math.isqrt(num_src)) if num_src > 0 else 0
        if side * side != num_src or ckpt.shape[2] != self.embed_dims:
            raise ValueError(
                f'Cannot load {name} of shape {tuple(ckpt.shape)} into a model whose '
                f'pos_embed is {tuple(self.pos_embed.shape)} (cls_token='
                f'{self.cls_token_layout!r}): the checkpoint has a different token layout '
                f'or width. Convert it with tools/model_converters or match the config.')
        cls_pos, patch_pos = self._split_pos_embed(ckpt, num_src)
        patch_pos = resize_pos_embed(patch_pos, (side, side), self.patch_resolution,
                                     self.interpolate_mode)
        if cls_pos is not None:
            slot = self._cls_slot(self._num_patches(self.patch_resolution))
            patch_pos = torch.cat([patch_pos[:, :slot], cls_pos, patch_pos[:, slot:]], dim=1)
        state_dict[name] = patch_pos

    # ---------------------------------------------------------------------- forward
    def _layout(self, num_patches: int) -> TokenLayout:
        if num_patches not in self._layouts:
            self._layouts[num_patches] = TokenLayout(num_patches, self.cls_token_layout,
                                                     self.num_registers)
        return self._layouts[num_patches]

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f'Expected images of shape (B, C, H, W); got {tuple(x.shape)}.')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'Expected {self.in_channels} input channels, got {x.shape[1]} '
                             f'(input shape {tuple(x.shape)}); set in_channels or convert '
                             f'the images.')
        for side in x.shape[2:]:
            self._check_side(side, 'Input')

    def embed(self, x: Tensor) -> Tuple[Tensor, TokenLayout, Tuple[int, int]]:
        """Images ``(B, 3, H, W)`` -> token sequence ``(B, T, C)``, its layout, patch grid."""
        self._check_input(x)
        x = self.patch_embed.proj(x)
        resolution = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, M, C)
        cls_pos, patch_pos = self._patch_pos_embed(resolution)
        tokens = [x + patch_pos]
        if cls_pos is not None:
            tokens.append((self.cls_token + cls_pos).expand(x.shape[0], -1, -1))
        if self.num_registers:
            tokens.append((self.register_tokens + self.pos_embed_reg).expand(
                x.shape[0], -1, -1))
        layout = self._layout(x.shape[1])
        x = torch.cat(tokens, dim=1)
        if len(tokens) > 1 or self.cls_token_layout == 'middle':
            x = x.index_select(1, layout.order.to(x.device))
        return self.pos_drop(x), layout, resolution

    def _format_output(self, tokens: Tensor, layout: TokenLayout,
                       resolution: Tuple[int, int]) -> Tensor:
        if self.out_type == 'raw':
            return tokens
        if self.out_type == 'cls_token':
            return tokens[:, layout.cls_index]
        patches = tokens.index_select(1, layout.patch_index.to(tokens.device))
        if self.out_type == 'avg_featmap':
            return patches.mean(dim=1)
        B, _, C = patches.shape
        return patches.transpose(1, 2).reshape(B, C, *resolution)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Images ``(B, in_channels, H, W)``, sides multiples of ``patch_size``.

        Returns:
            One output per ``out_indices`` entry, formatted by ``out_type``.
        """
        hidden, layout, resolution = self.embed(x)
        residual = None
        outs = []
        last = self.num_layers - 1
        for i, layer in enumerate(self.layers):
            hidden, residual = self.shuffle(i, layer, hidden, residual)
            if i in self.out_indices:
                if i == last:
                    stream = residual + self.drop_path(hidden)
                    tokens = self.norm_f(stream.to(self._norm_f_dtype(stream)))
                else:
                    tokens = residual + hidden
                outs.append(self._format_output(tokens, layout, resolution))
        if self.pyramid is not None:
            if len(outs) == 1:
                outs = outs * len(self.pyramid.scales)
            return self.pyramid(outs)
        return tuple(outs)

    def _norm_f_dtype(self, stream: Tensor) -> torch.dtype:
        weight = getattr(self.norm_f, 'weight', None)
        return stream.dtype if weight is None else weight.dtype
