#!/usr/bin/env bash
# Configure (or change) the Keycloak started by `start.sh DIR`, through the
# admin REST API. start.sh runs the first form itself.
#
#   configure.sh DIR
#       Creates or updates realm "dscc" and its five confidential clients
#       (idempotent; safe after a restart with the same DIR). Writes
#       DIR/endpoint.json and prints it as the last stdout line.
#   configure.sh DIR revoke-refresh-tokens ROLE|CLIENT_ID
#       Logs out every session of that client's service-account user, so each
#       refresh token it holds is answered with 400 invalid_grant "Session not
#       active". New client-credentials requests keep working.
#       Prints {"client_id":"...","sessions_removed":N}.
#   configure.sh DIR set-token-lifetime SECONDS
#       Changes the realm's access-token lifetime (applies to tokens issued
#       from now on) and updates DIR/endpoint.json; prints it.
#
# ROLE is plain, refresh, msp, tenant1 or tenant2.
# Environment: KEYCLOAK_TOKEN_LIFETIME_SECONDS (default 60, minimum 1),
# KEYCLOAK_REFRESH_TOKEN_LIFETIME_SECONDS (refresh client only; default: the
# realm's SSO session idle timeout, 1800).
set -euo pipefail

SCRIPT_NAME=configure.sh
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SRC_DIR/lib.sh"

usage() {
  echo "usage: $0 DIR [revoke-refresh-tokens ROLE|CLIENT_ID | set-token-lifetime SECONDS]" >&2
  exit 64
}
[[ $# -ge 1 && -n "$1" ]] || usage
DIR="$(cd "$1" && pwd)"
shift
CMD="${1:-setup}"
[[ $# -gt 0 ]] && shift

[[ -s "$DIR/base-url" && -s "$DIR/admin-password" && -s "$DIR/ca.crt" ]] ||
  die "$DIR has no running Keycloak (base-url, admin-password or ca.crt missing; run start.sh)"
BASE="$(cat "$DIR/base-url")"
CA="$DIR/ca.crt"
ADMIN_PASSWORD="$(cat "$DIR/admin-password")"
REALM=dscc
TOKEN_ENDPOINT="$BASE/realms/$REALM/protocol/openid-connect/token"

# role -> client_id; secrets are fixed so that a failing test is easy to
# reproduce with curl.
ROLES=(plain refresh msp tenant1 tenant2)
declare -A CLIENT_ID=(
  [plain]=dscc-plain [refresh]=dscc-refresh [msp]=dscc-msp
  [tenant1]=dscc-tenant-1 [tenant2]=dscc-tenant-2
)
client_secret() { printf '%s-secret' "${CLIENT_ID[$1]}"; }

# ---------------------------------------------------------------- helpers --
TMPD="$(mktemp -d)"
trap 'rm -rf "$TMPD"' EXIT

json_field() { # json_field KEY JSON: first string value of "KEY" (flat lookup)
  local re="\"$1\":\"([^\"]*)\""
  [[ "$2" =~ $re ]] && printf '%s' "${BASH_REMATCH[1]}"
}

ADMIN_TOKEN="" ADMIN_TOKEN_AT=0
admin_token() {
  # master realm admin tokens live 60 s; fetch a new one after 30 s
  if [[ -z "$ADMIN_TOKEN" || $(( $(now_ms) - ADMIN_TOKEN_AT )) -gt 30000 ]]; then
    local body
    body="$(curl -sS --cacert "$CA" --max-time 30 "$BASE/realms/master/protocol/openid-connect/token" \
      --data-urlencode grant_type=password --data-urlencode client_id=admin-cli \
      --data-urlencode username=admin --data-urlencode "password=$ADMIN_PASSWORD")" ||
      die "cannot reach $BASE for an admin token"
    ADMIN_TOKEN="$(json_field access_token "$body")" || die "no admin token from the master realm: $body"
    ADMIN_TOKEN_AT="$(now_ms)"
  fi
}

# api METHOD PATH [JSON]: sets API_STATUS, API_BODY, API_LOCATION.
api() {
  local method="$1" path="$2" data="${3:-}" out
  admin_token
  local curl_args=(-sS --cacert "$CA" --max-time 60 -X "$method" -D "$TMPD/headers" -o "$TMPD/body"
    -w '%{http_code}' -H "Authorization: Bearer $ADMIN_TOKEN")
  if [[ -n "$data" ]]; then curl_args+=(-H 'Content-Type: application/json' --data-binary "$data"); fi
  out="$(curl "${curl_args[@]}" "$BASE/admin/realms$path")" || die "admin API $method $path: curl failed"
  API_STATUS="$out"
  API_BODY="$(cat "$TMPD/body")"
  API_LOCATION="$(sed -nE 's/^[Ll]ocation: *([^[:space:]]*).*/\1/p' "$TMPD/headers" | tail -n 1)"
}
api_ok() { # api_ok EXPECTED_STATUS... -- METHOD PATH [JSON]
  local expected=()
  while [[ "$1" != -- ]]; do expected+=("$1"); shift; done
  shift
  api "$@"
  local e
  for e in "${expected[@]}"; do [[ "$API_STATUS" == "$e" ]] && return 0; done
  die "admin API $1 $2 answered $API_STATUS (expected ${expected[*]}): $API_BODY"
}

# client_uuid CLIENT_ID: Keycloak's internal id, or nothing.
client_uuid() {
  api_ok 200 -- GET "/$REALM/clients?clientId=$1&search=false"
  # ClientRepresentation serializes "id" first: [{"id":"<uuid>","clientId":...
  if [[ "$API_BODY" =~ ^\[\{\"id\":\"([0-9a-f-]{36})\" ]]; then printf '%s' "${BASH_REMATCH[1]}"; fi
}

resolve_role() { # ROLE or CLIENT_ID -> CLIENT_ID
  local r
  for r in "${ROLES[@]}"; do
    if [[ "$1" == "$r" || "$1" == "${CLIENT_ID[$r]}" ]]; then printf '%s' "${CLIENT_ID[$r]}"; return 0; fi
  done
  printf '%s' "$1"
}

lifetime_arg() {
  [[ "$1" =~ ^[0-9]+$ && "$1" -ge 1 ]] ||
    die "token lifetime must be a whole number of seconds >= 1 (got '$1'; Keycloak itself accepts 0, which issues already-expired tokens, and -1, which means 36000 s)"
  printf '%s' "$1"
}

write_endpoint_json() { # LIFETIME REFRESH_LIFETIME
  local r json clients="" sep=""
  for r in "${ROLES[@]}"; do
    clients+="$sep$(json_escape "$r"):{\"client_id\":$(json_escape "${CLIENT_ID[$r]}"),\"client_secret\":$(json_escape "$(client_secret "$r")")}"
    sep=","
  done
  local port="${BASE##*:}" http_port pid
  http_port="$(cat "$DIR/http-port" 2>/dev/null || true)"
  pid="$(cat "$DIR/keycloak.pid" 2>/dev/null || true)"
  local oidc="$BASE/realms/$REALM/protocol/openid-connect"
  json="{\"issuer\":$(json_escape "$BASE/realms/$REALM")"
  json+=",\"token_endpoint\":$(json_escape "$TOKEN_ENDPOINT")"
  json+=",\"revocation_endpoint\":$(json_escape "$oidc/revoke")"
  json+=",\"introspection_endpoint\":$(json_escape "$oidc/token/introspect")"
  json+=",\"jwks_uri\":$(json_escape "$oidc/certs")"
  json+=",\"base_url\":$(json_escape "$BASE"),\"realm\":$(json_escape "$REALM")"
  json+=",\"port\":$port,\"http_port\":${http_port:-null},\"pid\":${pid:-null}"
  json+=",\"ca_file\":$(json_escape "$CA"),\"dir\":$(json_escape "$DIR")"
  json+=",\"token_lifetime_seconds\":$1,\"refresh_token_lifetime_seconds\":$2"
  json+=",\"admin\":{\"username\":\"admin\",\"password\":$(json_escape "$ADMIN_PASSWORD"),\"client_id\":\"admin-cli\",\"token_endpoint\":$(json_escape "$BASE/realms/master/protocol/openid-connect/token")}"
  json+=",\"clients\":{$clients}}"
  printf '%s\n' "$json" >"$DIR/endpoint.json.tmp"
  mv -f "$DIR/endpoint.json.tmp" "$DIR/endpoint.json"
  printf '%s\n' "$json"
}

client_rep() { # ROLE [REFRESH_LIFETIME]
  local role="$1" cid="${CLIENT_ID[$1]}" attrs
  local use_refresh=false exchange=false
  [[ "$role" == refresh ]] && use_refresh=true
  [[ "$role" == tenant1 || "$role" == tenant2 ]] && exchange=true
  attrs="\"client_credentials.use_refresh_token\":\"$use_refresh\",\"standard.token.exchange.enabled\":\"$exchange\""
  # 0 = use the realm's SSO session idle timeout
  if [[ "$role" == refresh ]]; then attrs+=",\"client.session.idle.timeout\":\"${2:-0}\""; fi
  printf '{"clientId":"%s","name":"%s","enabled":true,"protocol":"openid-connect","publicClient":false,"bearerOnly":false,"serviceAccountsEnabled":true,"standardFlowEnabled":false,"implicitFlowEnabled":false,"directAccessGrantsEnabled":false,"clientAuthenticatorType":"client-secret","secret":"%s","attributes":{%s}}' \
    "$cid" "$cid" "$(client_secret "$role")" "$attrs"
}

# ------------------------------------------------------------------ setup --
setup() {
  local lifetime refresh_lifetime="" t0
  t0="$(now_ms)"
  lifetime="$(lifetime_arg "${KEYCLOAK_TOKEN_LIFETIME_SECONDS:-60}")" || exit 1
  if [[ -n "${KEYCLOAK_REFRESH_TOKEN_LIFETIME_SECONDS:-}" ]]; then
    refresh_lifetime="$(lifetime_arg "$KEYCLOAK_REFRESH_TOKEN_LIFETIME_SECONDS")" || exit 1
  fi

  api GET "/$REALM"
  case "$API_STATUS" in
    404) api_ok 201 -- POST "" "{\"realm\":\"$REALM\",\"enabled\":true,\"accessTokenLifespan\":$lifetime}" ;;
    200) api_ok 204 -- PUT "/$REALM" "{\"enabled\":true,\"accessTokenLifespan\":$lifetime,\"revokeRefreshToken\":false}" ;;
    *) die "admin API GET /$REALM answered $API_STATUS: $API_BODY" ;;
  esac
  api_ok 200 -- GET "/$REALM"
  local sso_idle=1800
  [[ "$API_BODY" =~ \"ssoSessionIdleTimeout\":([0-9]+) ]] && sso_idle="${BASH_REMATCH[1]}"

  local role id
  declare -A uuid=()
  # tenants first: the MSP's audience mappers name them
  for role in tenant1 tenant2 plain refresh msp; do
    id="$(client_uuid "${CLIENT_ID[$role]}")"
    if [[ -z "$id" ]]; then
      api_ok 201 -- POST "/$REALM/clients" "$(client_rep "$role" "$refresh_lifetime")"
      id="${API_LOCATION##*/}"
    else
      api_ok 204 -- PUT "/$REALM/clients/$id" "$(client_rep "$role" "$refresh_lifetime")"
    fi
    [[ "$id" =~ ^[0-9a-f-]{36}$ ]] || die "no id for client ${CLIENT_ID[$role]} (got '$id')"
    uuid[$role]="$id"
  done

  # MSP tokens must carry each tenant client in "aud", or the tenant's
  # exchange is refused: 403 access_denied "Client is not within the token
  # audience".
  api_ok 200 -- GET "/$REALM/clients/${uuid[msp]}/protocol-mappers/models"
  local mappers="$API_BODY" t name
  for t in tenant1 tenant2; do
    name="audience-${CLIENT_ID[$t]}"
    [[ "$mappers" == *"\"name\":\"$name\""* ]] && continue
    api_ok 201 -- POST "/$REALM/clients/${uuid[msp]}/protocol-mappers/models" \
      "{\"name\":\"$name\",\"protocol\":\"openid-connect\",\"protocolMapper\":\"oidc-audience-mapper\",\"config\":{\"included.client.audience\":\"${CLIENT_ID[$t]}\",\"access.token.claim\":\"true\",\"id.token.claim\":\"false\",\"introspection.token.claim\":\"true\"}}"
  done

  # Smoke test and warm-up: the first token request of a realm is slow.
  local body
  body="$(curl -sS --cacert "$CA" --max-time 60 "$TOKEN_ENDPOINT" -d grant_type=client_credentials \
    --data-urlencode "client_id=${CLIENT_ID[plain]}" --data-urlencode "client_secret=$(client_secret plain)")"
  [[ "$body" == *'"access_token":"'* ]] || die "client credentials for ${CLIENT_ID[plain]} failed: $body"
  log "realm $REALM ready in $(secs_since "$t0") s (access tokens ${lifetime} s, refresh client ${refresh_lifetime:-$sso_idle} s)"
  write_endpoint_json "$lifetime" "${refresh_lifetime:-$sso_idle}"
}

revoke_refresh_tokens() {
  [[ $# -eq 1 ]] || usage
  local cid id user_id n
  cid="$(resolve_role "$1")"
  id="$(client_uuid "$cid")"
  [[ -n "$id" ]] || die "no client $cid in realm $REALM"
  api_ok 200 -- GET "/$REALM/clients/$id/service-account-user"
  user_id="$(json_field id "$API_BODY")" || die "client $cid has no service-account user: $API_BODY"
  api_ok 200 -- GET "/$REALM/users/$user_id/sessions"
  n="$(grep -o '"userId":' <<<"$API_BODY" | wc -l | tr -d ' ')"
  api_ok 204 -- POST "/$REALM/users/$user_id/logout"
  log "logged out $n session(s) of service-account user of $cid"
  printf '{"client_id":%s,"sessions_removed":%s}\n' "$(json_escape "$cid")" "$n"
}

set_token_lifetime() {
  [[ $# -eq 1 ]] || usage
  local lifetime refresh_lifetime
  lifetime="$(lifetime_arg "$1")" || exit 1
  api_ok 204 -- PUT "/$REALM" "{\"accessTokenLifespan\":$lifetime}"
  refresh_lifetime=1800
  if [[ -s "$DIR/endpoint.json" && "$(cat "$DIR/endpoint.json")" =~ \"refresh_token_lifetime_seconds\":([0-9]+) ]]; then
    refresh_lifetime="${BASH_REMATCH[1]}"
  fi
  log "realm $REALM: access tokens now live $lifetime s"
  write_endpoint_json "$lifetime" "$refresh_lifetime"
}

case "$CMD" in
  setup) [[ $# -eq 0 ]] || usage; setup ;;
  revoke-refresh-tokens) revoke_refresh_tokens "$@" ;;
  set-token-lifetime) set_token_lifetime "$@" ;;
  *) usage ;;
esac
