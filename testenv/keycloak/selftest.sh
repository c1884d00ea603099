#!/usr/bin/env bash
# Check, with curl, every Keycloak behaviour the tests rely on, against the
# server that `start.sh DIR` started. Prints each response (token values cut)
# to stderr and exits non-zero at the first unexpected answer.
#
#   selftest.sh DIR
#
# It calls `configure.sh DIR revoke-refresh-tokens refresh` (so sessions of
# the refresh client are gone afterwards). Last stdout line: {"ok":true}.
set -euo pipefail

SCRIPT_NAME=selftest.sh
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SRC_DIR/lib.sh"

[[ $# -eq 1 && -s "$1/endpoint.json" ]] || { echo "usage: $0 DIR (after start.sh DIR)" >&2; exit 64; }
DIR="$(cd "$1" && pwd)"
EP="$(cat "$DIR/endpoint.json")"

field() { local re="\"$1\":\"([^\"]*)\""; [[ "$2" =~ $re ]] && printf '%s' "${BASH_REMATCH[1]}"; }
client() { # ROLE id|secret
  local re="\"$1\":\\{\"client_id\":\"([^\"]*)\",\"client_secret\":\"([^\"]*)\"\\}"
  [[ "$EP" =~ $re ]] || die "no client $1 in endpoint.json"
  if [[ "$2" == id ]]; then printf '%s' "${BASH_REMATCH[1]}"; else printf '%s' "${BASH_REMATCH[2]}"; fi
}
TOKEN="$(field token_endpoint "$EP")"
CA="$(field ca_file "$EP")"
TE_GRANT=urn:ietf:params:oauth:grant-type:token-exchange
AT_TYPE=urn:ietf:params:oauth:token-type:access_token

cut_tokens() { sed -E 's/"(access_token|refresh_token)":"[^"]*"/"\1":"<cut>"/g'; }
# post [curl args...]: POST to the token endpoint; sets STATUS and BODY
post() {
  local out
  out="$(curl -sS --cacert "$CA" -w '\n%{http_code}' "$TOKEN" "$@")"
  STATUS="${out##*$'\n'}"
  BODY="${out%$'\n'*}"
}
show() { log "$1 -> HTTP $STATUS $(cut_tokens <<<"$BODY")"; }
expect() { # STATUS SUBSTRING...
  local want="$1"; shift
  [[ "$STATUS" == "$want" ]] || die "expected HTTP $want, got $STATUS: $BODY"
  local s
  for s in "$@"; do [[ "$BODY" == *"$s"* ]] || die "expected $s in: $BODY"; done
}
jwt_claims() { # JWT -> payload JSON
  local p
  p="$(cut -d. -f2 <<<"$1" | tr '_-' '/+')"
  while (( ${#p} % 4 )); do p+="="; done
  base64 -d <<<"$p"
}

PLAIN="$(client plain id)" PLAIN_S="$(client plain secret)"
REFRESH="$(client refresh id)" REFRESH_S="$(client refresh secret)"
MSP="$(client msp id)" MSP_S="$(client msp secret)"

post -d grant_type=client_credentials -d "client_id=$PLAIN" -d "client_secret=$PLAIN_S"
show "client_credentials, client_secret_post"
expect 200 '"token_type":"Bearer"' '"expires_in":'
claims="$(jwt_claims "$(field access_token "$BODY")")"
log "  access token claims: $claims"

post -u "$PLAIN:$PLAIN_S" -d grant_type=client_credentials
show "client_credentials, client_secret_basic"
expect 200 '"token_type":"Bearer"'

declare -A seen=()
for _ in $(seq 1 10); do
  post -u "$PLAIN:$PLAIN_S" -d grant_type=client_credentials
  [[ "$BODY" =~ \"expires_in\":([0-9]+) ]] && seen[${BASH_REMATCH[1]}]=1
done
log "expires_in over 10 requests: ${!seen[*]} (configured $(sed -nE 's/.*"token_lifetime_seconds":([0-9]+).*/\1/p' <<<"$EP"))"

post -d grant_type=client_credentials -d "client_id=$PLAIN" -d client_secret=wrong
show "wrong secret"
expect 401 '"error":"unauthorized_client"'
post -u "no-such-client:x" -d grant_type=client_credentials
show "unknown client"
expect 401 '"error":"invalid_client"'

post -d grant_type=client_credentials -d "client_id=$REFRESH" -d "client_secret=$REFRESH_S"
show "client_credentials, refresh client"
expect 200 '"refresh_token":"' '"refresh_expires_in":'
rt="$(field refresh_token "$BODY")"
post -d grant_type=refresh_token -d "refresh_token=$rt" -d "client_id=$REFRESH" -d "client_secret=$REFRESH_S"
show "refresh_token grant, post"
expect 200 '"refresh_token":"'
rt2="$(field refresh_token "$BODY")"
post -u "$REFRESH:$REFRESH_S" -d grant_type=refresh_token -d "refresh_token=$rt2"
show "refresh_token grant, basic"
expect 200 '"refresh_token":"'
post -u "$REFRESH:$REFRESH_S" -d grant_type=refresh_token -d "refresh_token=$rt"
show "refresh_token grant, first (already used) refresh token again"
expect 200

post -d grant_type=client_credentials -d "client_id=$MSP" -d "client_secret=$MSP_S"
show "client_credentials, MSP client"
expect 200
msp_token="$(field access_token "$BODY")"
log "  MSP token aud: $(sed -nE 's/.*"aud":(\[[^]]*\]|"[^"]*").*/\1/p' <<<"$(jwt_claims "$msp_token")")"
for t in tenant1 tenant2; do
  post -u "$(client "$t" id):$(client "$t" secret)" -d "grant_type=$TE_GRANT" \
    -d "subject_token=$msp_token" -d "subject_token_type=$AT_TYPE"
  show "token exchange by $t, MSP token as subject"
  expect 200 "\"issued_token_type\":\"$AT_TYPE\"" '"token_type":"Bearer"'
  [[ "$BODY" != *'"refresh_token"'* ]] || die "exchange returned a refresh token"
  log "  exchanged token claims: $(jwt_claims "$(field access_token "$BODY")")"
done
post -d "grant_type=$TE_GRANT" -d "client_id=$(client tenant1 id)" -d "client_secret=$(client tenant1 secret)" \
  -d "subject_token=$msp_token" -d "subject_token_type=$AT_TYPE"
show "token exchange by tenant1, client_secret_post"
expect 200 "\"issued_token_type\":\"$AT_TYPE\""

post -d grant_type=client_credentials -d "client_id=$PLAIN" -d "client_secret=$PLAIN_S"
plain_token="$(field access_token "$BODY")"
post -u "$(client tenant1 id):$(client tenant1 secret)" -d "grant_type=$TE_GRANT" \
  -d "subject_token=$plain_token" -d "subject_token_type=$AT_TYPE"
show "token exchange by tenant1, subject token without tenant1 in aud"
expect 403 '"error":"access_denied"' 'Client is not within the token audience'
post -u "$PLAIN:$PLAIN_S" -d "grant_type=$TE_GRANT" -d "subject_token=$msp_token" -d "subject_token_type=$AT_TYPE"
show "token exchange by a client without standard.token.exchange.enabled"
expect 400 '"error":"invalid_request"'
post -u "$(client tenant1 id):$(client tenant1 secret)" -d "grant_type=$TE_GRANT" -d "subject_token=$msp_token"
show "token exchange without subject_token_type"
expect 400 '"error":"invalid_request"'
post -u "$(client tenant1 id):$(client tenant1 secret)" -d "grant_type=$TE_GRANT" \
  -d "subject_token=not-a-token" -d "subject_token_type=$AT_TYPE"
show "token exchange with a garbage subject token"
expect 400 '"error":"invalid_request"'

post -u "$REFRESH:$REFRESH_S" -d grant_type=refresh_token -d "refresh_token=not-a-token"
show "refresh_token grant, garbage refresh token"
expect 400 '"error":"invalid_grant"'
post -d grant_type=client_credentials -d "client_id=$REFRESH" -d "client_secret=$REFRESH_S"
rt="$(field refresh_token "$BODY")"
log "configure.sh revoke-refresh-tokens refresh: $("$SRC_DIR/configure.sh" "$DIR" revoke-refresh-tokens refresh 2>/dev/null | tail -n 1)"
post -u "$REFRESH:$REFRESH_S" -d grant_type=refresh_token -d "refresh_token=$rt"
show "refresh_token grant after revoke-refresh-tokens"
expect 400 '"error":"invalid_grant"' 'Session not active'
post -d grant_type=client_credentials -d "client_id=$REFRESH" -d "client_secret=$REFRESH_S"
show "client_credentials, refresh client, after the revocation"
expect 200 '"refresh_token":"'

log "all checks passed"
echo '{"ok":true}'
