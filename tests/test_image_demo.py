"""demo/image_demo.py on real photos of awkward sizes and modes, as users run it.

The photo is matplotlib's sample ``grace_hopper.jpg`` (512x600, RGB; matplotlib comes with
mmengine), its grayscale copy, and matplotlib's ``logo2.png`` (542x130, RGBA): no side is
a multiple of 16. The checkpoints are the toy configs' models, untrained.
"""
import os.path as osp

import matplotlib
import pytest
from helpers import CLS, MASK_RCNN, UPERNET, load_config, load_script, run_tool
from PIL import Image

from mmshufflemamba.datasets import TOY_ADE_CLASSES, TOY_COCO_CLASSES, TOY_SHAPES

SAMPLE_DATA = osp.join(matplotlib.get_data_path(), 'sample_data')
PHOTO = osp.join(SAMPLE_DATA, 'grace_hopper.jpg')
RGBA = osp.join(SAMPLE_DATA, 'logo2.png')
CONFIGS = {'seg': UPERNET, 'det': MASK_RCNN, 'cls': CLS}


@pytest.fixture(scope='module')
def gray_photo(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('gray') / 'grace_hopper_gray.png')
    Image.open(PHOTO).convert('L').save(path)
    return path


def image_demo(task, image, checkpoint, out, *extra, check=True):
    return run_tool('demo/image_demo.py', image, CONFIGS[task], checkpoint, '--out-file',
                    str(out), *extra, check=check)


def line(proc, start):
    return next(ln for ln in proc.stdout.splitlines() if ln.startswith(start))


def test_photos_have_awkward_sizes():
    assert Image.open(PHOTO).size == (512, 600) and Image.open(PHOTO).mode == 'RGB'
    assert Image.open(RGBA).size == (542, 130) and Image.open(RGBA).mode == 'RGBA'


# The toy test pipeline resizes to fit 256x64: the photo to 64x75, the logo to 256x61.
# Slide inference crops 64x64 windows, so only a side below 64 (the logo's 61) reaches
# the backbone unpadded; whole inference passes the photo's 75 as well.
SEG_CASES = {'slide': (RGBA, 542, 130, 'RGBA -> RGB over white'),
             'whole': (PHOTO, 512, 600, 'RGB)')}


@pytest.mark.parametrize('mode', sorted(SEG_CASES))
def test_segmentation_pads_any_size(tmp_path, untrained_checkpoints, mode):
    image, width, height, note = SEG_CASES[mode]
    out = tmp_path / 'seg.png'
    proc = image_demo('seg', image, untrained_checkpoints['seg'], out, '--cfg-options',
                      f'model.test_cfg.mode={mode}')
    assert f'{width}x{height}, {note}' in line(proc, 'image:'), proc.stdout
    assert line(proc, 'preprocessing:').endswith(
        f'pad to a multiple of 16 -> {mode} inference'), proc.stdout
    summary = line(proc, f'segmentation ({width}x{height}, ')
    names = [part.rsplit(' ', 1)[0] for part in summary.split(': ', 1)[1].split(', ')]
    assert set(names) <= set(TOY_ADE_CLASSES), summary  # the config's classes
    assert f'visualization: {out}' in proc.stdout
    assert Image.open(out).size == (width, height) and Image.open(out).mode == 'RGB'


@pytest.mark.parametrize('mode', sorted(SEG_CASES))
def test_segmentation_without_padding_fails_as_the_backbone_says(tmp_path, mode,
                                                                   untrained_checkpoints):
    """What the padding fixes (data_preprocessor.test_cfg.size_divisor=16)."""
    image, _, height, _ = SEG_CASES[mode]
    proc = image_demo('seg', image, untrained_checkpoints['seg'], tmp_path / 'seg.png',
                      '--cfg-options', f'model.test_cfg.mode={mode}',
                      'model.data_preprocessor.test_cfg=None', check=False)
    assert proc.returncode != 0
    side = 61 if image == RGBA else 75
    assert f'Input side {side} is not a multiple of the patch size 16' in proc.stderr


def test_detection_of_a_grayscale_photo(tmp_path, untrained_checkpoints, gray_photo):
    out = tmp_path / 'det.png'
    proc = image_demo('det', gray_photo, untrained_checkpoints['det'], out, '--score-thr',
                      '0.0')
    assert '512x600, L -> RGB' in line(proc, 'image:'), proc.stdout
    assert 'pad to a multiple of 32' in line(proc, 'preprocessing:')
    assert 'with masks' in line(proc, 'detection: ')
    listed = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.startswith('  ')
              and 'box [' in ln]
    assert listed and set(listed) <= set(TOY_COCO_CLASSES), proc.stdout
    assert Image.open(out).size == (512, 600)


def test_classification_resizes_and_crops_any_size(tmp_path, untrained_checkpoints):
    out = tmp_path / 'cls.png'
    proc = image_demo('cls', PHOTO, untrained_checkpoints['cls'], out)
    assert line(proc, 'preprocessing:') == (
        "preprocessing: ResizeEdge(scale=73, edge='short') -> CenterCrop(crop_size=64)")
    summary = line(proc, 'classification (top 4 of 4): ')
    names = [part.rsplit(' ', 1)[0] for part in summary.split(': ', 1)[1].split(', ')]
    assert sorted(names) == sorted(TOY_SHAPES[:4]), summary
    assert Image.open(out).size == (512, 600)


def test_classes_for_checkpoints_without_them_come_from_the_config():
    """Real configs name their dataset class (ADE20K's 150, COCO's 80), toy ones list
    their classes in metainfo; the demo draws with those, not the inferencers' defaults."""
    image_demo_module = load_script('demo/image_demo.py')
    expected = {
        'configs/upernet/upernet_shufflemamba-t_8xb2-160k_ade20k-512x512.py': (150, 'wall'),
        'configs/mask_rcnn/mask-rcnn_shufflemamba-t_fpn_1x_coco.py': (80, 'person'),
        CONFIGS['seg']: (5, 'background'),
        CONFIGS['det']: (3, 'disk'),
    }
    for config, (count, first) in expected.items():
        meta = image_demo_module.dataset_meta_from_config(
            load_config(config))
        assert len(meta['classes']) == len(meta['palette']) == count, config
        assert meta['classes'][0] == first, (config, meta['classes'][:3])


@pytest.mark.parametrize('content', ['missing', 'text', 'truncated'])
def test_unreadable_image_is_a_clear_error(tmp_path, content):
    path = tmp_path / 'img.jpg'
    if content == 'text':
        path.write_text('not an image')
    elif content == 'truncated':
        path.write_bytes(open(PHOTO, 'rb').read()[:5000])
    proc = run_tool('demo/image_demo.py', str(path), CONFIGS['seg'], 'none.pth',
                    check=False)
    assert proc.returncode != 0
    expected = 'no such file' if content == 'missing' else 'cannot read it as an image'
    assert f'image {path}: {expected}' in proc.stderr, proc.stderr
