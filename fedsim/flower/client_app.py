"""The ClientApp object Flower loads (``[tool.flwr.app.components] clientapp``).

Only flwr, torch, numpy and light fedsim modules are imported: this is what runs on a device.
"""

from fedsim.flower.client import make_client_app

app = make_client_app()
