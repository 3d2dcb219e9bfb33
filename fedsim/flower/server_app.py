"""The ServerApp object Flower loads (``[tool.flwr.app.components] serverapp``)."""

from fedsim.flower.server import make_server_app

app = make_server_app()
