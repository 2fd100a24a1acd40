# Sourced by benches/abba.sh and benches/callgrind.sh: the `all` shape's plugins.
#
# all_plugins ACCESS_LOG GLOBUS_PORT prints the [[plugins]] tables of the production shape:
# access_log to ACCESS_LOG, globus_auth against mock-globus on GLOBUS_PORT (client
# bench-client, secret in BENCH_GLOBUS_SECRET), rate_limits in memory with five checks that
# admit everything.
all_plugins() {
    cat <<TOML
[[plugins]]
kind = "access_log"
path = "$1"
[[plugins]]
kind = "globus_auth"
client_id = "bench-client"
client_secret_env = "BENCH_GLOBUS_SECRET"
introspect_url = "http://127.0.0.1:$2/v2/oauth2/token/introspect"
token_url = "http://127.0.0.1:$2/v2/oauth2/token"
groups_url = "http://127.0.0.1:$2/v2/groups/my_groups"
[[plugins]]
kind = "rate_limits"
[plugins.per_user]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[plugins.per_user_model]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000000
[plugins.per_model]
max_concurrent = 100000
TOML
}
