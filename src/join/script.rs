//! The join script `hakube node-join-script` prints (pure rendering).

use super::token::Role;

pub struct ScriptSpec<'a> {
    pub role: Role,
    pub cluster: &'a str,
    pub created_by: &'a str,
    pub created_at: &'a str,
    pub expires_at: &'a str,
    pub endpoints: &'a [String],
    pub token: &'a str,
    pub ca_hash: &'a str,
    pub certificate_key: Option<&'a str>,
    pub binary_sha256: &'a str,
}

/// Single-quotes a value for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn render(s: &ScriptSpec<'_>) -> String {
    let (what, join_flag) = match s.role {
        Role::Master => ("a master (control plane and etcd member)", " --master"),
        Role::Worker => ("a worker", ""),
    };
    let key_line =
        s.certificate_key.map(|k| format!("export HAKUBE_CERTIFICATE_KEY={}\n", quote(k))).unwrap_or_default();
    format!(
        r#"#!/usr/bin/env bash
# hakube join script: joins this host to cluster {cluster} as {what}.
# Made by {created_by} at {created_at}; its token expires at {expires_at}.
#
# Run it as root on the new host. Its arguments go to `hakube join`, e.g.
#   sudo bash join.sh --advertise-address 10.0.0.12
# It carries secrets (the join token{key_note}): keep it private, delete it once used.
set -euo pipefail
umask 077

export HAKUBE_JOIN_ENDPOINTS={endpoints}
export HAKUBE_JOIN_TOKEN={token}
export HAKUBE_CA_HASH={ca_hash}
{key_line}binary_sha256={binary_sha256}

# A hakube binary: HAKUBE_BIN, one on PATH, or the masters' own, fetched and
# checked against the hash above (TLS is not what vouches for it: the hash is).
find_hakube() {{
  local candidate dir ep
  for candidate in "${{HAKUBE_BIN:-}}" "$(command -v hakube || true)" /usr/local/bin/hakube; do
    if [[ -n $candidate && -x $candidate ]]; then
      printf '%s\n' "$candidate"
      return
    fi
  done
  dir=$(mktemp -d)
  # The token goes in a header read from a file, never on a command line.
  printf 'Authorization: Bearer %s\n' "$HAKUBE_JOIN_TOKEN" >"$dir/auth"
  printf 'header = Authorization: Bearer %s\n' "$HAKUBE_JOIN_TOKEN" >"$dir/wgetrc"
  for ep in ${{HAKUBE_JOIN_ENDPOINTS//,/ }}; do
    if curl -fsSk --max-time 120 -H @"$dir/auth" -o "$dir/hakube" "https://$ep/v1/binary" 2>/dev/null ||
      wget -q -T 120 --config="$dir/wgetrc" --no-check-certificate -O "$dir/hakube" "https://$ep/v1/binary" 2>/dev/null; then
      if [[ $(sha256sum "$dir/hakube" | cut -d' ' -f1) == "$binary_sha256" ]]; then
        chmod 0755 "$dir/hakube"
        printf '%s\n' "$dir/hakube"
        return
      fi
      echo "join.sh: the binary from $ep does not match sha256 $binary_sha256: not using it" >&2
    fi
  done
  echo "join.sh: no hakube binary on this host and none could be fetched from $HAKUBE_JOIN_ENDPOINTS:" >&2
  echo "join.sh: copy the masters' binary to /usr/local/bin/hakube, or set HAKUBE_BIN" >&2
  exit 1
}}

hakube=$(find_hakube)
exec "$hakube" join{join_flag} "$@"
"#,
        cluster = s.cluster,
        created_by = s.created_by,
        created_at = s.created_at,
        expires_at = s.expires_at,
        key_note = if s.certificate_key.is_some() { " and the key that opens the cluster's CA keys" } else { "" },
        endpoints = quote(&s.endpoints.join(",")),
        token = quote(s.token),
        ca_hash = quote(s.ca_hash),
        binary_sha256 = quote(s.binary_sha256),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_match_golden() {
        let endpoints = ["10.0.0.11:9443".to_owned(), "10.0.0.12:9443".to_owned()];
        let spec = |role, key| ScriptSpec {
            role,
            cluster: "hakube",
            created_by: "m1",
            created_at: "2026-01-01T00:00:00Z",
            expires_at: "2026-01-01T02:00:00Z",
            endpoints: &endpoints,
            token: "abcdef.0123456789abcdef",
            ca_hash: "sha256:00ff",
            certificate_key: key,
            binary_sha256: "1234",
        };
        crate::golden::check("join-master.sh", &render(&spec(Role::Master, Some("aa"))));
        crate::golden::check("join-worker.sh", &render(&spec(Role::Worker, None)));
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
