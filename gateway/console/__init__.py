"""The browser console at ``/ui``: server-rendered pages over the same authentication,
policies and registry as the API (``gateway.console.pages``), signed in with a key
(``gateway.console.sessions``)."""
