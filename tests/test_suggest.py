"""The one "did you mean" hint: closest choices, quoted and joined, or nothing."""

from eva_transfer.suggest import did_you_mean


def test_closest_choices_or_nothing():
    assert did_you_mean("eva_g_dett", ["eva_g_det", "eva_g_seg", "eva_l"]) == "; did you mean 'eva_g_det'?"
    assert (
        did_you_mean("eva_g", ["eva_g_det", "eva_g_seg"], n=2) == "; did you mean 'eva_g_seg' or 'eva_g_det'?"
    )  # closest first (difflib's order)
    assert did_you_mean("zzz", ["eva_g_det"]) == ""
    assert did_you_mean("lrr", ["lr"], show=lambda c: repr("optim." + c)) == "; did you mean 'optim.lr'?"
