"""The admin API's shape, shared by the admin socket's three protocols, the CLI and OpenAPI: the
REST route table, admin fields given as text, the views of config events, and the socket's HTTP
side (REST and the `/admin/events` websocket). Transports only translate into `AdminCommand`s and
ask the config actor through `sopy.runtime.config_requests`."""
