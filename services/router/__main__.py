import asyncio

from shared.observability import configure_logging, serve_metrics
from shared.server import run_until_signalled
from shared.settings import get_settings

from .server import start


async def main() -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    serve_metrics(settings.metrics_port, settings.metrics_address)
    router = await start(settings)
    await run_until_signalled(router.running, grace=settings.shutdown_grace_s, on_stop=router.close)


asyncio.run(main())
