//! `certgen`: issue and inspect the Micronets private PKI. See `docs/certificates.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use micronets_certgen::{
    Authority, Error, KeyType, LeafSpec, RootSpec, Usage, crl, dev, files, inspect, verify,
};

#[derive(Parser)]
#[command(version, about = "Issue and inspect the Micronets WebSocket proxy's certificates")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Issue a root CA: <base>.cert.pem and <base>.key.pem.
    Root(Common),
    /// Issue a leaf signed by a CA: <base>.cert.pem, <base>.key.pem and <base>.pkeycert.pem.
    Leaf {
        #[command(flatten)]
        common: Common,
        /// The CA certificate.
        #[arg(long)]
        ca_certfile: PathBuf,
        /// The CA private key (PKCS#8, or the original scripts' SEC1 form).
        #[arg(long)]
        ca_keyfile: PathBuf,
        /// Extended key usage: client, server or both.
        #[arg(long, default_value = "both")]
        usage: Usage,
        /// A DNS subjectAltName (repeatable).
        #[arg(long = "san-dns")]
        san_dns: Vec<String>,
        /// An IP subjectAltName (repeatable).
        #[arg(long = "san-ip")]
        san_ip: Vec<String>,
    },
    /// Describe every certificate in a PEM file.
    Inspect {
        /// The PEM file.
        file: PathBuf,
        /// One JSON object per certificate, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Verify a leaf (and any intermediates after it) against a CA bundle; exit 0 or 1.
    Verify {
        /// The CA certificate(s).
        #[arg(long)]
        ca: PathBuf,
        /// The leaf certificate or pkeycert.
        leaf: PathBuf,
        /// Require this usage (client or server; default: either).
        #[arg(long)]
        usage: Option<Usage>,
    },
    /// Add a certificate to the CA's revocation list (creating the CRL file when missing).
    #[command(group = clap::ArgGroup::new("which").required(true))]
    Revoke {
        /// The CA certificate.
        #[arg(long)]
        ca_certfile: PathBuf,
        /// The CA private key.
        #[arg(long)]
        ca_keyfile: PathBuf,
        /// The serial to revoke, in hex as `certgen inspect` prints it.
        #[arg(long, group = "which")]
        serial: Option<String>,
        /// The certificate (or pkeycert) to revoke.
        #[arg(long, group = "which")]
        cert: Option<PathBuf>,
        /// The CRL file (PEM), e.g. certs/micronets-ws-root.crl.pem.
        #[arg(long)]
        crl: PathBuf,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = 30)]
        next_update_days: u32,
    },
    /// Create or refresh the whole development PKI.
    Dev {
        /// Where to put it.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// Output path without suffix, e.g. certs/micronets-ws-root.
    #[arg(long)]
    cert_basename: PathBuf,
    /// Subject organization (O).
    #[arg(long)]
    subject_org_name: String,
    /// Subject CN [default: root: the organization; leaf: the basename's file name].
    #[arg(long)]
    common_name: Option<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 500)]
    expiration_in_days: u32,
    /// Key algorithm: p256, p384, ed25519, rsa2048 or rsa3072.
    #[arg(long, default_value = "p256")]
    key_type: KeyType,
    /// Replace existing output files.
    #[arg(long, alias = "force-overwrite")]
    force: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certgen: {e}");
            ExitCode::from(if matches!(e, Error::Invalid(_)) { 64 } else { 1 })
        }
    }
}

fn run(command: Command) -> Result<(), Error> {
    let (base, issued, leaf, force) = match command {
        Command::Root(c) => {
            let (common_name, days, key_type) = (c.common_name, c.expiration_in_days, c.key_type);
            let spec = RootSpec { org: c.subject_org_name, common_name, days, key_type };
            (c.cert_basename, micronets_certgen::issue_root(&spec)?, false, c.force)
        }
        Command::Leaf { common: c, ca_certfile, ca_keyfile, usage, san_dns, san_ip } => {
            let authority = Authority::load(&ca_certfile, &ca_keyfile)?;
            let default_cn = c.cert_basename.file_name().map(|n| n.to_string_lossy().into_owned());
            let spec = LeafSpec {
                org: c.subject_org_name,
                common_name: c.common_name.or(default_cn).unwrap_or_default(),
                days: c.expiration_in_days,
                key_type: c.key_type,
                usage,
                dns_names: san_dns,
                ip_addresses: san_ip,
            };
            (c.cert_basename, authority.issue_leaf(&spec)?, true, c.force)
        }
        Command::Inspect { file, json } => {
            let infos = inspect::CertInfo::from_file(&file)?;
            let text: Vec<String> = match json {
                true => infos.iter().map(|i| serde_json::to_string(i).unwrap_or_default()).collect(),
                false => infos.iter().map(ToString::to_string).collect(),
            };
            println!("{}", text.join(if json { "\n" } else { "\n\n" }));
            return Ok(());
        }
        Command::Verify { ca, leaf, usage } => {
            let purposes = verify::verify(&ca, &leaf, usage)?.purposes.join(" and ");
            println!("{}: OK (valid for {purposes} authentication)", leaf.display());
            return Ok(());
        }
        Command::Revoke { ca_certfile, ca_keyfile, serial, cert, crl, next_update_days } => {
            let serial = match (serial, cert) {
                (Some(text), _) => crl::parse_serial(&text)?,
                (None, Some(path)) => crl::serial_of(&path)?,
                (None, None) => return Err(Error::Invalid("give --serial or --cert".into())),
            };
            let authority = Authority::load(&ca_certfile, &ca_keyfile)?;
            let done = crl::revoke(&authority, &crl, &serial, next_update_days)?;
            let what = if done.already { "was already revoked" } else { "revoked" };
            println!(
                "{} {what}; {} lists {} serial(s), CRL number {}",
                done.serial,
                crl.display(),
                done.count,
                done.crl_number
            );
            return Ok(());
        }
        Command::Dev { dir } => {
            let report = dev::ensure(&dev::DevPki::new(&dir))?;
            let (created, kept) = (report.created.join(", "), report.kept.join(", "));
            println!("dev PKI in {}: created [{created}], kept [{kept}]", dir.display());
            return Ok(());
        }
    };
    if issued.capped_to_ca {
        eprintln!("certgen: warning: notAfter cut to the CA's own notAfter");
    }
    for path in files::write_issued(&base, &issued, leaf, force)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
