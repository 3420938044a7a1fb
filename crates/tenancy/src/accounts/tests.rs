use super::*;
use sqlx::Row;

async fn tenancy() -> (std::sync::Arc<Tenancy>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a.db").display());
    (Tenancy::open(&url, None).await.unwrap(), dir)
}

fn person(email: &str, password: Option<&str>) -> NewUser {
    NewUser {
        email: email.into(),
        name: "Ana".into(),
        role: Role::Member,
        organization: String::new(),
        password: password.map(str::to_string),
    }
}

#[tokio::test]
async fn sign_in_opens_a_session_that_sign_out_ends() {
    let (t, _d) = tenancy().await;
    let u = t
        .create_user(person(" Ana@Example.org ", Some("s3cret-pass")))
        .await
        .unwrap();
    assert_eq!(u.email, "ana@example.org");
    assert!(matches!(
        t.create_user(person("ana@example.org", None)).await,
        Err(AccountError::EmailTaken)
    ));
    assert!(matches!(
        t.sign_in("ana@example.org", "wrong-pass", "1.2.3.4").await,
        Err(AccountError::BadCredentials)
    ));
    let (s, token) = t
        .sign_in("ANA@example.org", "s3cret-pass", "1.2.3.4")
        .await
        .unwrap();
    assert_eq!(s.user.id, u.id);
    let again = t.session(&token).await.unwrap().unwrap();
    assert_eq!(again.csrf, s.csrf);
    // The token is stored only as its hash.
    let stored: String = sqlx::query("SELECT id_hash FROM sessions")
        .fetch_one(&t.store.pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    assert_ne!(stored, token);
    assert!(!stored.contains(&token[6..]));
    t.sign_out(&token).await.unwrap();
    assert!(t.session(&token).await.unwrap().is_none());
}

#[tokio::test]
async fn five_failures_lock_the_account_even_for_the_right_password() {
    let (t, _d) = tenancy().await;
    t.create_user(person("b@example.org", Some("right-password")))
        .await
        .unwrap();
    for _ in 0..5 {
        assert!(matches!(
            t.sign_in("b@example.org", "wrong-password", "9.9.9.9")
                .await,
            Err(AccountError::BadCredentials)
        ));
    }
    assert!(matches!(
        t.sign_in("b@example.org", "right-password", "8.8.8.8")
            .await,
        Err(AccountError::Throttled(_))
    ));
}

#[tokio::test]
async fn an_approved_request_gets_a_link_that_works_once() {
    let (t, _d) = tenancy().await;
    let r = t
        .request_access("c@example.org", "Cee", "Uni", "research")
        .await
        .unwrap();
    assert!(matches!(
        t.request_access("c@example.org", "Cee", "Uni", "again")
            .await,
        Err(AccountError::Conflict(_))
    ));
    let (decided, user) = t.decide_access(&r.id, true, "admin-key").await.unwrap();
    assert_eq!(decided.status, "approved");
    let user = user.unwrap();
    assert!(matches!(
        t.decide_access(&r.id, false, "admin-key").await,
        Err(AccountError::Conflict(_))
    ));
    let link = t.password_link(&user.id).await.unwrap();
    assert!(matches!(
        t.redeem_password_link(&link, "short".into()).await,
        Err(AccountError::Invalid {
            field: "password",
            ..
        })
    ));
    t.redeem_password_link(&link, "a good password".into())
        .await
        .unwrap();
    assert!(matches!(
        t.redeem_password_link(&link, "another password".into())
            .await,
        Err(AccountError::BadLink)
    ));
    t.sign_in("c@example.org", "a good password", "1.1.1.1")
        .await
        .unwrap();
}

#[tokio::test]
async fn disabling_a_user_ends_sessions_and_revokes_keys() {
    let (t, _d) = tenancy().await;
    let mut u = t
        .create_user(person("d@example.org", Some("pass-word-1")))
        .await
        .unwrap();
    let (_, token) = t
        .sign_in("d@example.org", "pass-word-1", "1.1.1.1")
        .await
        .unwrap();
    let (_, key) = t
        .create_key(crate::KeySpec {
            name: "mine".into(),
            user_id: Some(u.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(t.authenticate(&key).await.unwrap().is_some());
    t.disable_user(&mut u).await.unwrap();
    assert!(t.session(&token).await.unwrap().is_none());
    assert_eq!(t.authenticate(&key).await, Err(crate::KeyRefused::Revoked));
    assert!(matches!(
        t.sign_in("d@example.org", "pass-word-1", "1.1.1.1").await,
        Err(AccountError::BadCredentials)
    ));
}

#[tokio::test]
async fn a_key_is_held_to_its_users_and_teams_limits_and_refusals_take_nothing() {
    let (t, _d) = tenancy().await;
    let u = t.create_user(person("e@example.org", None)).await.unwrap();
    t.store
        .set_user_limits(
            &u.id,
            &crate::subjects::Limits {
                rpm: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let team = t
        .store
        .insert_team(
            "lab",
            &crate::subjects::Limits {
                max_concurrent: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let spec = |team_id: Option<&str>| crate::KeySpec {
        name: "k".into(),
        rpm: Some(10),
        user_id: Some(u.id.clone()),
        team_id: team_id.map(str::to_string),
        ..Default::default()
    };
    let (personal, _) = t.create_key(spec(None)).await.unwrap();
    let (team_key, _) = t.create_key(spec(Some(&team.id))).await.unwrap();
    let subjects = t.subjects(&team_key).await;
    assert_eq!(
        subjects.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [format!("u:{}", u.id), format!("t:{}", team.id)]
    );
    // The team allows one request in flight: the second is refused by the team, and
    // its admission by the key and the user is taken back.
    let (first, _) = t.admit_all(&team_key, &subjects, 0).await.unwrap();
    let (_, who) = t.admit_all(&team_key, &subjects, 0).await.err().unwrap();
    assert_eq!(who, format!("t:{}", team.id));
    drop(first);
    // The user's 3 requests a minute are shared by both keys: 1 counted so far.
    let personal_subjects = t.subjects(&personal).await;
    assert!(t.admit_all(&personal, &personal_subjects, 0).await.is_ok());
    assert!(t.admit_all(&team_key, &subjects, 0).await.is_ok());
    let (d, who) = t
        .admit_all(&personal, &personal_subjects, 0)
        .await
        .err()
        .unwrap();
    assert_eq!((who, d.limit), (format!("u:{}", u.id), 3));
}

#[tokio::test]
async fn a_prepaid_balance_is_a_budget_that_top_ups_raise() {
    let (t, _d) = tenancy().await;
    t.set_prepaid(true);
    let u = t.create_user(person("f@example.org", None)).await.unwrap();
    let (key, _) = t
        .create_key(crate::KeySpec {
            name: "k".into(),
            user_id: Some(u.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let want = crate::budget::Estimate {
        tokens: 10,
        usd: 0.5,
    };
    let subjects = t.subjects(&key).await;
    let (e, who) = t
        .reserve_budget_all(&key, &subjects, want)
        .await
        .err()
        .unwrap();
    assert_eq!(who, format!("pay:u:{}", u.id));
    assert!(e
        .text(crate::subjects::whose(&who))
        .contains("prepaid balance"));
    t.store
        .credit(&format!("u:{}", u.id), 1.0, "topup", "first", "admin-key")
        .await
        .unwrap();
    t.forget_subjects();
    let subjects = t.subjects(&key).await;
    let mut h = t.reserve_budget_all(&key, &subjects, want).await.unwrap();
    h.set_actual(crate::budget::Estimate {
        tokens: 10,
        usd: 0.75,
    });
    drop(h);
    // The hold counted its spend: 0.25 is left, less than the 0.5 this one may cost,
    // so it holds the rest, and the next one finds nothing.
    let h = t.reserve_budget_all(&key, &subjects, want).await.unwrap();
    assert!(t.reserve_budget_all(&key, &subjects, want).await.is_err());
    drop(h);
}
