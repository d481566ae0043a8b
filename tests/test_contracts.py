"""Surface identity: fixed bit fields that round-trip, stay unique and order the slots."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper_lab.contracts import HostKind, Role, Site, pack_surface_uid, unpack_surface_uid

fields = st.tuples(st.sampled_from(list(HostKind)), st.integers(0, 4095), st.sampled_from(list(Site)), st.sampled_from(list(Role)))


@given(fields)
def test_surface_uid_round_trips(f):
    assert unpack_surface_uid(pack_surface_uid(*f)) == f


@given(fields, fields)
def test_surface_uid_is_unique_and_orders_by_kind_depth_site_role(a, b):
    ua, ub = pack_surface_uid(*a), pack_surface_uid(*b)
    assert (ua == ub) == (a == b)
    key = lambda f: (int(f[0]), f[1], int(f[2]), int(f[3]))
    assert (ua < ub) == (key(a) < key(b))


def test_surface_uid_rejects_out_of_range_fields():
    with pytest.raises(ValueError, match="depth_idx"):
        pack_surface_uid(HostKind.CNN, 4096, Site.BLOCK_END)
