"""The server-rendered web UI. `pages/` holds the handlers, one module per page family (parse
the form, call a domain service, render); `present/` the page contexts they render; `router`
mounts them with /static; `errors` turns errors into error pages; `session` and `forms` hold
the browser session, CSRF checks and form parsing; `templating` the Jinja environment."""
