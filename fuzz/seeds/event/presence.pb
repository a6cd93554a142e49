presence.updateŠ
 €ğÌ†¦7	