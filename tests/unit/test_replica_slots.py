"""A replica's slots, from the catalog to the router: the registry stores `slots` as an integer, the
route carries them (the model's metadata, else its runtime's default), and one request's n choices
take half the slots of the endpoint."""

from __future__ import annotations

import pytest

from llmops.v1 import deployment_pb2
from registry.domain import check_model_metadata
from router.routes import route_from_proto
from router.service import choice_share
from shared.errors import InvalidArgument

from ..fakes import routed


def route(runtime: str = "", replicas: int = 1, **metadata):  # noqa: ANN003, ANN201
    endpoint = routed("chat-model", [f"127.0.0.1:{9000 + i}" for i in range(replicas)])
    endpoint.model.runtime = runtime
    endpoint.model.metadata.update(metadata)
    return route_from_proto(endpoint)


def test_the_registry_stores_slots_as_an_integer_and_refuses_what_is_not_one_from_1_to_64():
    assert check_model_metadata({"slots": 8.0}) == {"slots": 8}  # a JSON number through protobuf's Struct
    assert type(check_model_metadata({"slots": 8.0})["slots"]) is int
    for value in (0, 65, 1.5, "8", True):
        with pytest.raises(InvalidArgument, match="metadata.slots must be a whole number from 1 to 64"):
            check_model_metadata({"slots": value})


def test_a_route_has_its_models_slots_else_its_runtimes():
    assert route("llamacpp").slots == 8 and route("echo").slots == 64 and route("").slots == 1
    assert route("llamacpp", slots=2).slots == 2 and route("llamacpp").runtime == "llamacpp"
    assert route_from_proto(deployment_pb2.RoutedEndpoint()).slots == 1


@pytest.mark.parametrize("runtime,replicas,metadata,share", [
    ("", 1, {}, 1),  # one replica of one slot: one choice at a time
    ("", 4, {}, 2),
    ("llamacpp", 1, {}, 4),  # 8 slots: 4 choices at once, the other 4 free for other requests
    ("llamacpp", 2, {"slots": 3}, 3),
])
def test_one_requests_choices_take_half_the_slots_of_the_endpoint(runtime, replicas, metadata, share):
    assert choice_share(route(runtime, replicas, **metadata)) == share
