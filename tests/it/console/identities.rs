//! The console's user page and linked identities (CONTRACT 8.5 with 8.1).

use super::{admin_with_mfa, user_id};
use crate::browser::browse;
use crate::common::*;

/// The user page lists the identities linked to the account at outside
/// providers (CONTRACT 8.5 with 8.1): provider, subject, email; and says
/// so when there are none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_page_lists_linked_identities() {
    use crate::common::idp::{Idp, IdpConfig};
    use crate::federation::{code_signin, corp_user, fed_builder, register_gateway, users, Fed};
    let idp = Idp::start(IdpConfig {
        accounts: users(&[("lin", corp_user("lin@corp.example", true, &[], &["pwd"]))]),
        clients: vec![],
        ..Default::default()
    })
    .await;
    let gw_extra = "[admin_console]\nenabled = true\nrequire_mfa = true\n";
    let gw = TestGateway::start_with(fed_builder(&idp, "", gw_extra)).await;
    register_gateway(&idp, &gw, "corp").await;
    let fed = Fed { gw, idp };
    let v = code_signin(&fed, "corp", "lin")
        .await
        .expect("the first sign-in makes an account");
    let id = v["user"]["id"].as_str().expect("the user").to_string();
    let access = v["access_token"].as_str().expect("tokens");
    let r = fed.gw.get("/auth/identities", Some(access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let linked = r.json()["identities"][0].clone();
    let subject = linked["subject"].as_str().expect("a subject").to_string();
    let admin = admin_with_mfa(&fed.gw, "console-fed-admin@example.com").await;
    let page = browse(&fed.gw, &format!("/auth/ui/admin/user?id={id}"), &admin)
        .await
        .text();
    let table = page
        .split(r#"<table id="identities">"#)
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .unwrap_or_else(|| panic!("no identities table: {page}"));
    assert!(
        table.contains(&format!(
            "<td>corp SSO</td><td>{subject}</td><td>lin@corp.example</td>"
        )),
        "{table}"
    );
    // A local account has none.
    let plain = user_id(&fed.gw.signup("console-plain@example.com").await);
    let page = browse(&fed.gw, &format!("/auth/ui/admin/user?id={plain}"), &admin)
        .await
        .text();
    assert!(page.contains("No linked identities."), "{page}");
}
