//! One person across channels: the same phone on SMS and WhatsApp links the two customers
//! (verified by the carrier and WhatsApp); an operator merges another customer in and can
//! take one out again, which no automatic link undoes; the record and timeline are the
//! person's, while each conversation stays with the identity that wrote.

use std::time::Duration;

use parley_domain::Channel;
use parley_proto::v1;
use parley_testkit::{App, eventually};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

/// A customer message on a channel of tenant `acme`, as ingest publishes it; returns the
/// customer id.
pub async fn write(app: &App, channel: Channel, address: &str, text: &str) -> String {
    parley_e2e::publish_customer_message(app, "acme", channel, "api", address, text).await.1.to_string()
}

async fn find(app: &App, token: &str, id: &str) -> Option<v1::Customer> {
    let mut history = app.history_client(token).await;
    history.get_customer(v1::GetCustomerRequest { customer_id: id.into() }).await.ok()?.into_inner().customer
}

async fn customer(app: &App, token: &str, id: &str) -> v1::Customer {
    find(app, token, id).await.expect("customer")
}

async fn timeline_len(app: &App, token: &str, id: &str) -> usize {
    let mut history = app.history_client(token).await;
    let request = v1::GetCustomerTimelineRequest { customer_id: id.into(), ..Default::default() };
    history.get_customer_timeline(request).await.map(|r| r.into_inner().messages.len()).unwrap_or(0)
}

fn addresses(c: &v1::Customer) -> Vec<&str> {
    let mut a: Vec<&str> = c.identities.iter().map(|i| i.address.as_str()).collect();
    a.sort();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_across_channels_by_verified_phone_and_by_an_operator_s_merge() {
    let app = App::spawn().await;
    let fx = app.tenant("acme", &["anna"]).await;
    let token = fx.operator_token("anna").to_owned();

    // The same number writes by SMS, then on WhatsApp: one person.
    let sms = write(&app, Channel::Sms, "+79161234567", "Не приходит код").await;
    eventually(WAIT, "the SMS customer in history", || async {
        (timeline_len(&app, &token, &sms).await == 1).then_some(())
    })
    .await;
    let whatsapp = write(&app, Channel::WhatsApp, "79161234567", "Пишу сюда, код так и не пришёл").await;
    let person = eventually(WAIT, "the two linked", || async {
        let c = find(&app, &token, &whatsapp).await?;
        (c.identities.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(addresses(&person), ["+79161234567", "79161234567"]);
    assert_eq!(person.linked, vec![v1::LinkedCustomer { customer_id: sms.clone(), reason: "verified_phone".into() }]);
    assert_eq!(timeline_len(&app, &token, &sms).await, 2, "one timeline from either side");
    // Another number is another person.
    let other = write(&app, Channel::WhatsApp, "79169999999", "Другой человек").await;
    eventually(WAIT, "the other customer in history", || async {
        (timeline_len(&app, &token, &other).await == 1).then_some(())
    })
    .await;
    assert_eq!(customer(&app, &token, &other).await.identities.len(), 1);

    // An operator merges the CRM customer in.
    let crm = write(&app, Channel::Api, "crm-42", "Это я же, из приложения").await;
    eventually(WAIT, "the CRM customer in history", || async {
        (timeline_len(&app, &token, &crm).await == 1).then_some(())
    })
    .await;
    let mut history = app.history_client(&token).await;
    let merged = history
        .link_customers(v1::LinkCustomersRequest { customer_id: crm.clone(), into_customer_id: whatsapp.clone() })
        .await
        .expect("link")
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(addresses(&merged), ["+79161234567", "79161234567", "crm-42"]);
    assert_eq!(timeline_len(&app, &token, &sms).await, 3);

    // And takes the WhatsApp customer out again: it stands alone, and a new message from the
    // same number does not link it back.
    let alone = history
        .unlink_customer(v1::UnlinkCustomerRequest { customer_id: whatsapp.clone() })
        .await
        .expect("unlink")
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(addresses(&alone), ["79161234567"]);
    assert!(alone.linked.is_empty(), "{alone:?}");
    assert_eq!(addresses(&customer(&app, &token, &sms).await), ["+79161234567", "crm-42"]);
    write(&app, Channel::WhatsApp, "79161234567", "Ещё раз").await;
    eventually(WAIT, "the new message in history", || async {
        (timeline_len(&app, &token, &whatsapp).await == 2).then_some(())
    })
    .await;
    assert_eq!(addresses(&customer(&app, &token, &whatsapp).await), ["79161234567"]);

    // Bad requests.
    let status = history
        .link_customers(v1::LinkCustomersRequest { customer_id: crm.clone(), into_customer_id: crm.clone() })
        .await
        .expect_err("itself");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = history
        .link_customers(v1::LinkCustomersRequest {
            customer_id: crm.clone(),
            into_customer_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let globex = app.tenant("globex", &["boris"]).await;
    let status = app
        .history_client(globex.operator_token("boris"))
        .await
        .link_customers(v1::LinkCustomersRequest { customer_id: crm.clone(), into_customer_id: sms.clone() })
        .await
        .expect_err("another tenant's");
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}
