"""Plain Vision Mamba (Vim) backbone trained with stochastic layer-wise shuffle.

ShuffleMamba: "Stochastic Layer-Wise Shuffle: A Good Practice to Improve Vision Mamba
Training" (arXiv 2408.17081), on the Vim architecture ("Vision Mamba", arXiv 2401.09417).
With ``shuffle_rate=0`` (or in eval mode) the model is exactly the plain Vim.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmshufflemamba.registry import MODELS
from ..layers import LayerwiseShuffle, MambaBlock, SimplePyramid, build_norm
from ..layers.block import DropPath
from ..utils import (INIT_SCHEMES, FitTarget, TokenLayout, fit_checkpoint, init_vim_weights,
                     load_pretrained, resize_pos_embed, split_pos_embed, tokens_to_map)
from ..utils.backbone_args import (check_choice, check_images, check_patch_side,
                                   check_pyramid_args, check_token_args, resolve_arch,
                                   resolve_out_indices)

__all__ = ['ShuffleMamba']

OUT_TYPES = ('raw', 'cls_token', 'featmap', 'avg_featmap', 'registers')
INTERMEDIATE_OUTPUTS = ('residual', 'mixer')
TOKEN_PARAMS = ('pos_embed', 'cls_token', 'register_tokens', 'pos_embed_reg')


@MODELS.register_module()
class ShuffleMamba(BaseModule):
    """Plain bidirectional Mamba backbone (Vim) with stochastic layer-wise shuffle.

    Args:
        arch: A name of :attr:`arch_zoo` or a dict with ``embed_dims`` and ``num_layers``
            (and optionally ``norm_type``, ``patch_stride``). The zoo holds the published
            sizes: ``tiny``, ``small``, ``middle`` (LayerNorm, as upstream), ``base``,
            ``large`` (48 blocks), ``large-40`` (40 blocks, ``mambar_large_patch16_224_40``)
            and ``tiny-stride8`` / ``small-stride8`` (Vim-T+ / Vim-S+: patch 16, stride 8).
        img_size: Input size the position embedding is stored for. Other sizes are
            handled by bicubic resizing at run time.
        patch_size: Kernel size of the patch embedding.
        patch_stride: Its stride; default: the arch's, else ``patch_size``. A grid side
            is ``(side - patch_size) // patch_stride + 1`` (27 at 224 px for 16 / 8).
        in_channels: Image channels.
        out_indices: Blocks whose output is returned; negative values count from the end.
        out_type: ``'raw'`` (all tokens ``(B, T, C)``), ``'cls_token'`` (``(B, C)``),
            ``'featmap'`` (patch tokens ``(B, C, Hg, Wg)`` on the patch grid) or
            ``'avg_featmap'`` (mean of patch tokens ``(B, C)``), as in mmpretrain; and
            ``'registers'`` (the register tokens ``(B, k, C)``, for the Mamba-Reg head).
        intermediate_output: What an ``out_indices`` entry before the last block returns:
            ``'residual'`` (default) the residual stream after that block,
            ``residual + hidden``, i.e. what the next block normalises; ``'mixer'`` that
            block's mixer output ``hidden`` alone (upstream ShuffleMamba's segmentation
            backbone). The last block always returns ``norm_f(residual + hidden)``.
        cls_token: ``'head'``, ``'middle'`` (Vim) or None (no class token); see
            :mod:`mmshufflemamba.models.utils.token_layout`.
        num_registers: Register tokens (Mamba-Reg ``get_cls_idx`` layout); needs
            ``cls_token=None``.
        shuffle_rate: Shuffle probability of the last layer (``p_i = rate * i / (L-1)``).
        drop_path_rate: Stochastic depth; block ``i`` gets ``linspace(0, rate, L)[i - 1]``
            and the final add ``rate`` (Vim's schedule).
        drop_rate: Dropout after adding the position embedding.
        norm_type: ``'RMSNorm'`` or ``'LN'``; default: the arch's (RMSNorm for a dict).
        norm_eps: Norm epsilon.
        residual_in_fp32: Keep the residual stream in float32.
        final_norm: Apply ``norm_f`` to the output of the last block.
        frozen_stages: Freeze the embeddings and the first ``frozen_stages`` blocks
            (``-1``: nothing).
        with_cp: Activation checkpointing in every block.
        mixer_cfg: Extra arguments of :class:`BiMambaMixer` (``d_state``, ``expand``,
            ``recompute``, ...).
        out_scales: For dense prediction: resample the ``featmap`` outputs into a
            pyramid, output ``k`` by ``out_scales[k]``. Scales are relative to the token
            map's stride ``patch_stride``: ``(4, 2, 1, 0.5)`` gives strides 4/8/16/32 for
            stride 16, ``(2, 1, 0.5, 0.25)`` for stride 8 (see :attr:`out_strides`).
            Either one map per scale (``out_indices`` of the same length, as BEiT) or one
            map for all scales (a single index, as ViTDet). None: no pyramid.
        pyramid_norm: Norm inside the pyramid's upsamplers and on each of its levels:
            ``'GN'`` (default; any batch, one process), ``'LN2d'``, ``'BN'`` or
            ``'SyncBN'``; see :func:`~mmshufflemamba.models.layers.pyramid.build_norm2d`.
        interpolate_mode: Mode for resizing the position embedding.
        init_scheme: How weights are initialised when nothing is loaded: ``'vim'`` (Vim,
            Mamba-Reg) or ``'shufflemamba'`` (upstream ShuffleMamba's plain models); see
            :func:`~mmshufflemamba.models.utils.init_vim_weights`.
        ckpt_cls_token: Where the class-token slot of ``pos_embed`` sits in checkpoints
            loaded into a backbone *without* a class token (``'head'``: ShuffleMamba and
            this package's classifiers; ``'middle'``: Vim's ``*midclstok*`` weights). The
            slot is then dropped. Checkpoints loaded into a backbone with a class token
            are taken to share its layout.
        init_cfg: mmengine init config (e.g. ``dict(type='Pretrained', checkpoint=...)``).
    """
    arch_zoo: Dict[str, dict] = {
        **dict.fromkeys(['t', 'tiny'], {'embed_dims': 192, 'num_layers': 24}),
        **dict.fromkeys(['s', 'small'], {'embed_dims': 384, 'num_layers': 24}),
        # ShuffleMamba-M: rms_norm=False upstream (models_shuffle.mambar_middle_patch16_224)
        **dict.fromkeys(['m', 'middle'], {'embed_dims': 576, 'num_layers': 32,
                                          'norm_type': 'LN'}),
        **dict.fromkeys(['b', 'base'], {'embed_dims': 768, 'num_layers': 24}),
        **dict.fromkeys(['l', 'large'], {'embed_dims': 1024, 'num_layers': 48}),
        'large-40': {'embed_dims': 1024, 'num_layers': 40},
        # Vim-T+ / Vim-S+ (vim_*_patch16_stride8_224_*): fine-tuned with stride 8
        'tiny-stride8': {'embed_dims': 192, 'num_layers': 24, 'patch_stride': 8},
        'small-stride8': {'embed_dims': 384, 'num_layers': 24, 'patch_stride': 8},
    }
    _ARCH_DEFAULTS = {'norm_type': 'RMSNorm', 'patch_stride': None}
    # modules a classification checkpoint does not hold: new, initialised, reported
    DENSE_ONLY: Tuple[str, ...] = ('pyramid.', )

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 patch_size: int = 16,
                 patch_stride: Optional[int] = None,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_type: str = 'cls_token',
                 intermediate_output: str = 'residual',
                 cls_token: Optional[str] = 'head',
                 num_registers: int = 0,
                 shuffle_rate: float = 0.0,
                 drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0,
                 norm_type: Optional[str] = None,
                 norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True,
                 final_norm: bool = True,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 mixer_cfg: Optional[dict] = None,
                 out_scales: Optional[Sequence[float]] = None,
                 pyramid_norm: str = 'GN',
                 interpolate_mode: str = 'bicubic',
                 init_scheme: str = 'vim',
                 ckpt_cls_token: str = 'head',
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = resolve_arch(arch, self.arch_zoo, self._ARCH_DEFAULTS,
                                          norm_type=norm_type, patch_stride=patch_stride)
        self.embed_dims = self.arch_settings['embed_dims']
        self.num_layers = self.arch_settings['num_layers']
        self.norm_type = self.arch_settings['norm_type']
        self.patch_size = patch_size
        stride = self.arch_settings['patch_stride']
        self.patch_stride = patch_size if stride is None else stride
        if not 0 < self.patch_stride <= patch_size:
            raise ValueError(f'patch_stride must lie in 1..patch_size ({patch_size}); got '
                             f'{self.patch_stride}.')
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_channels = in_channels
        for side in self.img_size:
            check_patch_side(side, patch_size, self.patch_stride, 'img_size')

        check_choice('out_type', out_type, OUT_TYPES)
        check_choice('intermediate_output', intermediate_output, INTERMEDIATE_OUTPUTS)
        check_choice('ckpt_cls_token', ckpt_cls_token, ('head', 'middle'))
        check_choice('init_scheme', init_scheme, INIT_SCHEMES)
        check_token_args(cls_token, num_registers, out_type)
        self.ckpt_cls_token = ckpt_cls_token
        self.init_scheme = init_scheme
        self.cls_token_layout = cls_token
        self.num_registers = num_registers
        self.out_type = out_type
        self.intermediate_output = intermediate_output
        self.interpolate_mode = interpolate_mode
        self.out_indices = resolve_out_indices(out_indices, self.num_layers)
        self.final_norm = final_norm
        self.frozen_stages = frozen_stages

        C = self.embed_dims
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, C, patch_size, stride=self.patch_stride)
        self.patch_resolution = self.grid_size(self.img_size)
        self._pos_layout = TokenLayout(self.patch_resolution[0] * self.patch_resolution[1],
                                       cls_token)  # that of pos_embed: (1, [1 +] Hg*Wg, C)
        self.pos_embed = nn.Parameter(torch.zeros(1, self._pos_layout.num_tokens, C))
        if cls_token is not None:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        if num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, C))
            self.pos_embed_reg = nn.Parameter(torch.zeros(1, num_registers, C))
        self.pos_drop = nn.Dropout(drop_rate)

        self.shuffle = LayerwiseShuffle(self.num_layers, shuffle_rate)
        dpr = torch.linspace(0, drop_path_rate, self.num_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([
            MambaBlock(
                C,
                norm_type=self.norm_type,
                norm_eps=norm_eps,
                drop_path_rate=([0.0] + dpr)[i],
                residual_in_fp32=residual_in_fp32,
                mixer_cfg=mixer_cfg,
                with_cp=with_cp) for i in range(self.num_layers)
        ])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = build_norm(self.norm_type, C, norm_eps) if final_norm else nn.Identity()
        check_pyramid_args(out_scales, out_type, self.out_indices)
        self.pyramid = None if out_scales is None else SimplePyramid(C, out_scales, pyramid_norm)

        init_vim_weights(self.patch_embed.proj, self.layers, self._tokens(), init_scheme)
        self._register_load_state_dict_pre_hook(self._fit_checkpoint)
        self._freeze_stages()

    # ----------------------------------------------------------------- construction
    def grid_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """Patch grid ``(Hg, Wg)`` of an ``(H, W)`` input: ``(side - patch) // stride + 1``."""
        return tuple((side - self.patch_size) // self.patch_stride + 1 for side in size)

    @property
    def out_strides(self) -> Tuple[float, ...]:
        """Strides of the outputs w.r.t. the input: the token map's is ``patch_stride``."""
        if self.pyramid is None:
            return (self.patch_stride, ) * len(self.out_indices)
        return tuple(self.patch_stride / scale for scale in self.pyramid.scales)

    def _tokens(self) -> Dict[str, nn.Parameter]:
        """The position embeddings and tokens this backbone has, by name."""
        return {name: getattr(self, name) for name in TOKEN_PARAMS if hasattr(self, name)}

    def init_weights(self) -> None:
        """Weights are initialised at construction; a ``Pretrained`` init_cfg loads over
        them through :func:`load_pretrained`, which logs and checks every key."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'map_location'}
            if unknown:
                raise ValueError(f'init_cfg keys {sorted(unknown)} are not understood by '
                                 f'ShuffleMamba (type, checkpoint, prefix, map_location).')
            load_pretrained(self, self.fit_target(), cfg['checkpoint'], cfg.get('prefix'),
                            cfg.get('map_location', 'cpu'), self.DENSE_ONLY)
            self._is_init = True
            return
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
        for token in self._tokens().values():
            token.requires_grad = False

    def train(self, mode: bool = True) -> 'ShuffleMamba':
        super().train(mode)
        self._freeze_stages()
        return self

    # ---------------------------------------------------------------- optimiser info
    def no_weight_decay(self) -> set:
        """Names of parameters that take no weight decay (besides ``_no_weight_decay`` ones)."""
        return set(TOKEN_PARAMS)

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
        if name in TOKEN_PARAMS or name.startswith('patch_embed'):
            return 0, num_layers
        if name.startswith('layers.'):
            return int(name.split('.')[1]) + 1, num_layers
        return num_layers - 1, num_layers

    # ---------------------------------------------------------------- checkpoints
    def fit_target(self) -> FitTarget:
        """What :func:`fit_checkpoint` fits a checkpoint to for this backbone."""
        return FitTarget(
            embed_dims=self.embed_dims, num_layers=self.num_layers, norm_type=self.norm_type,
            grid=self.patch_resolution, cls_token=self.cls_token_layout,
            num_registers=self.num_registers, ckpt_cls_token=self.ckpt_cls_token,
            final_norm=self.final_norm, interpolate_mode=self.interpolate_mode,
            arch=self.arch_settings, img_size=self.img_size, patch_size=self.patch_size,
            patch_stride=self.patch_stride)

    def _fit_checkpoint(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Load-state-dict pre-hook: fit ``state_dict`` to this backbone, in place."""
        fitted, _ = fit_checkpoint(state_dict, self.fit_target(), prefix)
        state_dict.clear()
        state_dict.update(fitted)

    # ---------------------------------------------------------------------- forward
    def _layout(self, num_patches: int) -> TokenLayout:
        return TokenLayout(num_patches, self.cls_token_layout, self.num_registers)

    def _check_input(self, x: Tensor) -> None:
        check_images(x, self.in_channels, self.patch_size, self.patch_stride)

    def _pos_embed(self, resolution: Tuple[int, int]) -> Tuple[Optional[Tensor], Tensor]:
        """Class-token slot ``(1, 1, C)`` or None, and the patch position embedding resized
        to the grid ``resolution``: ``(1, Hg*Wg, C)``."""
        cls_pos, patch_pos = split_pos_embed(self.pos_embed, self._pos_layout)
        # a symbolic grid (torch.export with dynamic sizes) is always resized: comparing it
        # with ours would specialise the export to one size (same-size resizing is exact)
        symbolic = any(isinstance(side, torch.SymInt) for side in resolution)
        if symbolic or resolution != self.patch_resolution:
            patch_pos = resize_pos_embed(patch_pos, self.patch_resolution, resolution,
                                         self.interpolate_mode, always=symbolic)
        return cls_pos, patch_pos

    def embed(self, x: Tensor) -> Tuple[Tensor, TokenLayout, Tuple[int, int]]:
        """Images ``(B, 3, H, W)`` -> token sequence ``(B, T, C)``, its layout, patch grid."""
        self._check_input(x)
        x = self.patch_embed.proj(x)
        resolution = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, M, C)
        cls_pos, patch_pos = self._pos_embed(resolution)
        extra = None  # the class token or the registers, with their position embeddings
        if cls_pos is not None:
            extra = (self.cls_token + cls_pos).expand(x.shape[0], -1, -1)
        elif self.num_registers:
            extra = (self.register_tokens + self.pos_embed_reg).expand(x.shape[0], -1, -1)
        layout = self._layout(x.shape[1])
        x = layout.arrange(x + patch_pos, extra)
        return self.pos_drop(x), layout, resolution

    def _format_output(self, tokens: Tensor, layout: TokenLayout,
                       resolution: Tuple[int, int]) -> Tensor:
        if self.out_type == 'raw':
            return tokens
        if self.out_type == 'cls_token':
            return tokens[:, layout.cls_index]
        if self.out_type == 'registers':
            return layout.registers(tokens)
        patches = layout.patches(tokens)
        if self.out_type == 'avg_featmap':
            return patches.mean(dim=1)
        return tokens_to_map(patches, *resolution)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Images ``(B, in_channels, H, W)`` whose sides fit the patch grid (see
        :meth:`grid_size`; multiples of ``patch_size`` when the stride equals it).

        Returns:
            One output per ``out_indices`` entry, formatted by ``out_type``.
        """
        hidden, layout, resolution = self.embed(x)
        residual = None
        outs = []
        last = self.num_layers - 1
        perms = self.shuffle.plan(hidden.shape[1])
        for i, layer in enumerate(self.layers):
            hidden, residual = self.shuffle(layer, hidden, residual, perms[i])
            if i in self.out_indices:
                if i == last:
                    stream = residual + self.drop_path(hidden)
                    tokens = self.norm_f(stream.to(self._norm_f_dtype(stream)))
                elif self.intermediate_output == 'mixer':
                    tokens = hidden
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
