from helpers import ASSETS


def test_rank_real_assets(model):
    ranking, rewards = model.inference_rank("a painting of an ocean", [str(p) for p in ASSETS])
    assert sorted(ranking) == [1, 2, 3, 4]
    assert len(set(round(r, 4) for r in rewards)) == 4

