from __future__ import annotations

from shared import api
from shared.server import RunningServer, start_server
from shared.settings import Settings

PUBLIC_SERVICES = [s.full_name for s in api.services()]


async def start(settings: Settings, *, port: int | None = None) -> RunningServer:
    return await start_server(
        service="reflection", servicers=[], reflected=PUBLIC_SERVICES,
        address=f"{settings.host}:{settings.reflection_port if port is None else port}",
    )
