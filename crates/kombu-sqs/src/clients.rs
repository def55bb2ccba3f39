//! The AWS SDK clients: one rustls (ring) HTTPS client shared by SQS, SNS
//! and the credential providers; the default credential chain or the URL's
//! keys; the region and endpoint from the options.

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

use crate::settings::{SqsSettings, StaticKeys};

/// The region when neither the options nor the environment name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The SQS and SNS clients of one connection.
#[derive(Clone, Debug)]
pub(crate) struct AwsClients {
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) sns: aws_sdk_sns::Client,
    sdk: SdkConfig,
}

fn credentials(keys: &StaticKeys) -> Credentials {
    Credentials::new(
        keys.access_key_id.clone(),
        keys.secret_access_key.clone(),
        keys.session_token.clone(),
        None,
        "kombu-sqs-url",
    )
}

impl AwsClients {
    /// Resolve region and credentials (the default chain unless the URL
    /// gave keys) and make the clients. Nothing is sent yet.
    pub(crate) async fn new(settings: &SqsSettings) -> AwsClients {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        // Every attempt at a request is bounded (a long poll gets its wait
        // on top, see `receive_timeouts`): a hung endpoint fails it with a
        // timeout instead of holding it forever.
        let mut timeouts =
            TimeoutConfig::builder().operation_attempt_timeout(settings.socket_timeout);
        if let Some(limit) = settings.connect_timeout {
            timeouts = timeouts.connect_timeout(limit);
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts.build());
        // Without a `region` option the loader's own chain (environment,
        // profile, instance metadata: with the client above) decides.
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(keys) = &settings.keys {
            loader = loader.credentials_provider(credentials(keys));
        }
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let mut sdk = loader.load().await;
        if sdk.region().is_none() {
            sdk = sdk
                .into_builder()
                .region(Region::new(DEFAULT_REGION))
                .build();
        }
        AwsClients {
            sqs: aws_sdk_sqs::Client::new(&sdk),
            sns: aws_sdk_sns::Client::new(&sdk),
            sdk,
        }
    }

    /// An SQS client with other keys and maybe another region (a
    /// predefined queue's own credentials).
    pub(crate) fn sqs_with(
        &self,
        keys: Option<&StaticKeys>,
        region: Option<&str>,
    ) -> aws_sdk_sqs::Client {
        let mut builder = aws_sdk_sqs::config::Builder::from(&self.sdk);
        if let Some(keys) = keys {
            builder = builder.credentials_provider(credentials(keys));
        }
        if let Some(region) = region {
            builder = builder.region(Region::new(region.to_owned()));
        }
        aws_sdk_sqs::Client::from_conf(builder.build())
    }

    /// The timeouts of a long poll of `wait_seconds`.
    pub(crate) fn receive_timeouts(
        settings: &SqsSettings,
        wait_seconds: i32,
    ) -> aws_sdk_sqs::config::Builder {
        let wait = std::time::Duration::from_secs(wait_seconds.max(0) as u64);
        let mut timeouts =
            TimeoutConfig::builder().operation_attempt_timeout(settings.socket_timeout + wait);
        if let Some(limit) = settings.connect_timeout {
            timeouts = timeouts.connect_timeout(limit);
        }
        aws_sdk_sqs::config::Builder::default().timeout_config(timeouts.build())
    }

    /// The region in use.
    pub(crate) fn region(&self) -> String {
        self.sdk
            .region()
            .map_or_else(|| DEFAULT_REGION.to_owned(), |r| r.to_string())
    }
}
