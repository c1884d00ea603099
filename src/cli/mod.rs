//! The `status` and `renew` commands, for people at a terminal and for scripts.
//!
//! They run as `dscc-token-operator status|renew`, and as the kubectl plugin `kubectl dscc
//! status|renew` when the binary is installed (copied or linked) as `kubectl-dscc`:
//! [`plugin_main`] notices the program name. Both take the usual kubectl flags
//! ([`KubeArgs`]).
//!
//! - [`status`]: gathering what is known about credentials, and the pure formatting of it.
//! - [`renew`]: the manual refresh request (`dscc.io/refresh-requested-at`).
//!
//! Nothing here prints a token, a client secret, a refresh token or an Authorization value:
//! the target Secret is read only to measure its keys and to decode the token's claims, and
//! the values never leave [`status::SecretSummary::of`].

pub mod renew;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use renew::RenewArgs;
pub use status::StatusArgs;

/// The program name prefix that makes the binary a kubectl plugin.
pub const PLUGIN_PREFIX: &str = "kubectl-dscc";

const STATUS_ABOUT: &str = "Show the state of DsccCredentials: Ready, expiry, renewal, failures, the Secret's keys, the token's claims, Events";
const STATUS_HELP: &str = "\
Show the state of DsccCredentials.

With NAME: everything about one credential: Ready and its reason, the token's expiry and the
next renewal, the grant and token group, the last failure and the next retry, the target
Secret's keys (names and sizes only), the token's JWT claims (decoded from the Secret, never
the token itself), the rollout restarts and the recent Events.
Without NAME: a table of the credentials of the namespace (or of all namespaces with -A),
and a line for each that is not Ready saying why.

No token, client secret, refresh token or Authorization value is ever printed.

Exit status: 1 when the named credential is not Ready (or on an error), 0 otherwise; the
table without NAME exits 0 whatever the credentials' state. For scripts:
  dscc-token-operator status -n storage array-reports >/dev/null || echo not ready";

const RENEW_ABOUT: &str =
    "Ask the operator for a new token now (sets dscc.io/refresh-requested-at)";
const RENEW_HELP: &str = "\
Ask the operator for a new token now, like `cmctl renew`.

Sets the annotation dscc.io/refresh-requested-at of the credential (or, with --all, of every
credential of the namespace, or of all namespaces with -A) to the current time; the operator
answers with one token request. A suspended credential (spec.suspend) is not renewed until
it is resumed.";

/// Where the commands find the cluster: the flags kubectl users expect.
#[derive(Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// The kubeconfig file. Default: $KUBECONFIG, else ~/.kube/config, else the in-cluster
    /// service account.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use. Default: the current context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace. Default: the namespace of the kubeconfig context, else "default".
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
}

/// Which namespaces a command looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One namespace.
    Namespace(String),
    /// Every namespace (`-A`).
    All,
}

impl KubeArgs {
    /// A client for the chosen kubeconfig and context, and the scope of the flags (the
    /// context's namespace when none is given).
    pub async fn connect(&self) -> anyhow::Result<(Client, Scope)> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options).await?,
            None => Config::infer()
                .await
                .context("no kubeconfig found (set KUBECONFIG or pass --kubeconfig)")?,
        };
        let scope = if self.all_namespaces {
            if self.namespace.is_some() {
                anyhow::bail!("--namespace and --all-namespaces exclude each other");
            }
            Scope::All
        } else {
            Scope::Namespace(
                self.namespace
                    .clone()
                    .unwrap_or_else(|| config.default_namespace.clone()),
            )
        };
        Ok((Client::try_from(config)?, scope))
    }
}

/// `status` and `renew` as subcommands of `dscc-token-operator`.
#[derive(Subcommand)]
pub enum Command {
    #[command(about = STATUS_ABOUT, long_about = STATUS_HELP)]
    Status(StatusCommand),
    #[command(about = RENEW_ABOUT, long_about = RENEW_HELP)]
    Renew(RenewCommand),
}

/// `status` with the cluster flags.
#[derive(Args)]
pub struct StatusCommand {
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    args: StatusArgs,
}

/// `renew` with the cluster flags.
#[derive(Args)]
pub struct RenewCommand {
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    args: RenewArgs,
}

impl Command {
    /// Runs the command. A named credential that is not Ready is an error
    /// ([`status::NotReady`]), so that the exit status says so.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Status(command) => status::run(&command.kube, &command.args).await,
            Command::Renew(command) => renew::run(&command.kube, &command.args).await,
        }
    }
}

/// The kubectl plugin: `kubectl dscc status|renew`, with the kubectl flags before or after
/// the subcommand.
#[derive(Parser)]
#[command(
    name = "kubectl-dscc",
    bin_name = "kubectl dscc",
    version,
    about = "Inspect and renew the DsccCredentials of dscc-token-operator (HPE GreenLake / DSCC API tokens)"
)]
struct Plugin {
    #[command(flatten)]
    kube: KubeArgs,
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
    #[command(about = STATUS_ABOUT, long_about = STATUS_HELP)]
    Status(StatusArgs),
    #[command(about = RENEW_ABOUT, long_about = RENEW_HELP)]
    Renew(RenewArgs),
}

impl From<Plugin> for Command {
    fn from(plugin: Plugin) -> Self {
        let kube = plugin.kube;
        match plugin.command {
            PluginCommand::Status(args) => Command::Status(StatusCommand { kube, args }),
            PluginCommand::Renew(args) => Command::Renew(RenewCommand { kube, args }),
        }
    }
}

/// Whether a program called `argv0` is the kubectl plugin: its file name starts with
/// `kubectl-dscc` (kubectl runs `kubectl-dscc` from the PATH for `kubectl dscc`).
pub fn is_plugin_name(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with(PLUGIN_PREFIX))
}

/// When the program runs as `kubectl-dscc`: parses the plugin's arguments, runs the command
/// and returns the exit status. `None` when it runs under any other name.
pub fn plugin_main() -> Option<ExitCode> {
    let argv0 = std::env::args_os().next()?;
    if !is_plugin_name(&argv0) {
        return None;
    }
    let command = Command::from(Plugin::parse());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return Some(ExitCode::FAILURE);
        }
    };
    Some(match runtime.block_on(command.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn plugin(args: &[&str]) -> Command {
        let argv = std::iter::once("kubectl-dscc").chain(args.iter().copied());
        Command::from(Plugin::try_parse_from(argv).expect("the arguments parse"))
    }

    #[test]
    fn the_plugin_is_recognised_by_its_file_name() {
        for name in [
            "kubectl-dscc",
            "/usr/local/bin/kubectl-dscc",
            "kubectl-dscc.exe",
        ] {
            assert!(is_plugin_name(name.as_ref()), "{name}");
        }
        for name in [
            "dscc-token-operator",
            "/opt/kubectl-dscc/dscc-token-operator",
            "kubectl",
        ] {
            assert!(!is_plugin_name(name.as_ref()), "{name}");
        }
    }

    #[test]
    fn the_plugin_takes_the_kubectl_flags_before_or_after_the_subcommand() {
        for args in [
            &["-n", "storage", "status", "reports"][..],
            &["status", "reports", "--namespace", "storage"],
            &["status", "-n=storage", "reports"],
        ] {
            let Command::Status(command) = plugin(args) else {
                panic!("status expected for {args:?}");
            };
            assert_eq!(
                command.kube.namespace.as_deref(),
                Some("storage"),
                "{args:?}"
            );
            assert_eq!(command.args.name.as_deref(), Some("reports"), "{args:?}");
        }
        let Command::Renew(command) = plugin(&[
            "--kubeconfig",
            "/tmp/kc",
            "--context",
            "prod",
            "renew",
            "--all",
            "-A",
        ]) else {
            panic!("renew expected");
        };
        assert!(command.kube.all_namespaces && command.args.all);
        assert_eq!(command.kube.context.as_deref(), Some("prod"));
        assert_eq!(command.kube.kubeconfig, Some(PathBuf::from("/tmp/kc")));
    }

    #[test]
    fn renew_needs_a_name_or_all_but_not_both() {
        let parse = |args: &[&str]| {
            Plugin::try_parse_from(std::iter::once("kubectl-dscc").chain(args.iter().copied()))
        };
        assert!(parse(&["renew"]).is_err());
        assert!(parse(&["renew", "reports", "--all"]).is_err());
        assert!(parse(&["renew", "reports"]).is_ok());
    }

    #[test]
    fn the_help_tells_scripts_about_the_exit_status() {
        let mut command = Plugin::command();
        let help = command
            .find_subcommand_mut("status")
            .expect("status")
            .render_long_help()
            .to_string();
        assert!(help.contains("Exit status: 1 when the named credential is not Ready"));
        Plugin::command().debug_assert();
    }
}
