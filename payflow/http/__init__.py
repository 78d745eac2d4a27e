"""HTTP layer: thin aiohttp handlers, routes and middlewares over `PaymentService`."""
