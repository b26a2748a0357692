"""A model's `slots` (how many requests one replica runs at once) is checked at registration, since the
deployment writes it into the replica's config and the router admits by it: a whole number from 1 to
shared.model_limits.MAX_SLOTS, or a 400 envelope naming metadata.slots, and nothing is stored."""

from __future__ import annotations

import pytest
import requests

from shared.model_limits import MAX_SLOTS

from ..helpers import ADMIN, RESEARCHER, assert_envelope, model_body, unique


def post_model(gateway, metadata: dict, team: str) -> requests.Response:  # noqa: ANN001
    return requests.post(f"{gateway.api}/catalog/models", json=model_body(ownerTeam=team, metadata=metadata),
                         headers=RESEARCHER)


def models_of(gateway, team: str) -> list:  # noqa: ANN001
    r = requests.get(f"{gateway.api}/catalog/models", params={"ownerTeam": team}, headers=ADMIN)
    return assert_envelope(r, 200, "success")["data"].get("models", [])


@pytest.mark.parametrize("slots,shown", [(0, "0"), (MAX_SLOTS + 1, "65"), (1.5, "1.5"), ("8", '"8"'),
                                         (True, "true")])
def test_slots_that_are_not_a_whole_number_from_1_to_64_are_refused(gateway, slots, shown):
    team = unique("team")
    error = assert_envelope(post_model(gateway, {"slots": slots}, team), 400, "error")
    assert error["message"] == (f"metadata.slots must be a whole number from 1 to {MAX_SLOTS} written as a JSON "
                                f"number (how many requests one replica runs at once); got {shown}")
    assert models_of(gateway, team) == []


@pytest.mark.parametrize("slots", [8, 8.0, MAX_SLOTS])
def test_slots_are_stored_as_an_integer(gateway, slots):
    model = assert_envelope(post_model(gateway, {"slots": slots}, unique("team")), 200, "success")["data"]
    got = assert_envelope(requests.get(f"{gateway.api}/catalog/models/{model['id']}", headers=ADMIN),
                          200, "success")["data"]["metadata"]
    assert got == {"slots": int(slots)} and isinstance(got["slots"], int)
