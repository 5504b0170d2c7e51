"""model-index.yml and the metafiles list every config, and only configs that exist."""
import glob
import os.path as osp

import pytest
import yaml
from helpers import ROOT

CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                            recursive=True) if '_base_' not in p)


def load(path):
    with open(osp.join(ROOT, path)) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope='module')
def metafiles():
    index = load('model-index.yml')
    assert list(index) == ['Import'], index
    missing = [p for p in index['Import'] if not osp.isfile(osp.join(ROOT, p))]
    assert not missing, f'model-index.yml imports metafiles that do not exist: {missing}'
    return {path: load(path) for path in index['Import']}


def test_every_config_is_listed_and_every_listed_config_exists(metafiles):
    listed = {}
    for path, meta in metafiles.items():
        for model in meta['Models']:
            assert model['Config'] not in listed, f"{model['Config']} listed twice"
            listed[model['Config']] = path
            assert osp.dirname(model['Config']) == osp.dirname(path), (path, model['Config'])
            assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0], model
    unlisted = sorted(set(CONFIGS) - set(listed))
    stale = sorted(set(listed) - set(CONFIGS))
    assert not unlisted, f'configs missing from the metafiles: {unlisted}'
    assert not stale, f'metafiles list configs that do not exist: {stale}'
    folders = {osp.dirname(c) for c in CONFIGS}
    assert {osp.dirname(p) for p in metafiles} == folders, 'one metafile per config folder'


def test_entries_are_complete_and_copied_from_the_readmes(metafiles):
    for path, meta in metafiles.items():
        collections = {c['Name']: c for c in meta['Collections']}
        readme = open(osp.join(ROOT, osp.dirname(path), 'README.md')).read().splitlines()
        for collection in collections.values():
            assert osp.isfile(osp.join(ROOT, collection['README'])), collection
            assert collection['Paper']['URL'].startswith('https://arxiv.org/abs/')
        for model in meta['Models']:
            assert model['In Collection'] in collections, model
            metadata = model['Metadata']
            assert metadata['Training Data'] and model['Task'], model
            # the README's table row for this config carries the same numbers
            row = [ln for ln in readme if osp.basename(model['Config']) in ln]
            assert row, f"{model['Config']} has no row in {osp.dirname(path)}/README.md"
            cells = [c.strip() for c in row[0].split('|')]
            for key in ('Parameters', 'FLOPs'):
                if key in metadata:
                    assert any(cell.split(' ')[0] == metadata[key] for cell in cells), (
                        model['Name'], key, row[0])
            converted = model.get('Converted From')
            assert model['Weights'] is None or converted is None, model
            if converted:
                assert converted['Weights'].startswith('https://huggingface.co/'), converted
                script, src, dst = converted['Convert'].split()[1:]
                assert osp.isfile(osp.join(ROOT, script)), converted
                assert src.endswith('.pth') and dst.endswith('.pth'), converted
                assert osp.basename(src).split('.')[0] in converted['Weights'] or \
                    'hustvl/Vim' in converted['Weights'], converted


def test_published_weights_are_named_where_they_exist(metafiles):
    """Vim and Mamba-Reg publish weights; ShuffleMamba does not (its README: to-do)."""
    converted = {model['Name']: model['Converted From']['Weights']
                 for meta in metafiles.values() for model in meta['Models']
                 if model.get('Converted From')}
    assert sorted(n.split('_')[0] for n in converted) == sorted(
        ['shufflemamba-reg-b', 'shufflemamba-reg-l', 'shufflemamba-reg-s', 'vim-s',
         'vim-s-stride8', 'vim-t', 'vim-t-stride8']), converted
    text = open(osp.join(ROOT, 'configs/shufflemamba/metafile.yml')).read()
    assert 'ShuffleMamba publishes no trained weights' in text
