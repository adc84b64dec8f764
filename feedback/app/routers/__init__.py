"""The app's routers, one per resource; :func:`feedback.app.create_app` includes them."""
