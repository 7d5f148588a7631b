const cards=JSON.parse(document.getElementById('cards').textContent);
const MARGIN=+document.getElementById('cards').dataset.margin, AGREE=+document.getElementById('cards').dataset.agreement;
function nameAt(c, t){  // a fixed threshold: most of the cluster's tracklets pass it for one character
  const votes={};
  for(const [best, score, lead] of c.verdicts){
    if(best!==null && score!==null && score>=t && (lead===null || lead>=MARGIN)){votes[best]=(votes[best]||0)+1}
  }
  const top=Object.keys(votes).sort((a,b)=>votes[b]-votes[a])[0];
  return top!==undefined && votes[top] > AGREE*c.verdicts.length ? top : null;
}
function preview(){
  const t=+document.getElementById('threshold').value; document.getElementById('shown').textContent=t.toFixed(2);
  const time={}, was={}; let named=0, before=0;
  for(const c of cards){
    const keep=c.source==='label', name=keep ? c.character : nameAt(c, t), now=name!==null;
    const who=now ? name : 'unknown';
    time[who]=(time[who]||0)+c.seconds; was[c.named?c.character:'unknown']=(was[c.named?c.character:'unknown']||0)+c.seconds;
    named+=now; before+=c.named;
  }
  const names=[...new Set([...Object.keys(time),...Object.keys(was)])].sort();
  document.getElementById('summary').textContent=`${named} of ${cards.length} clusters named (now ${before})`;
  document.getElementById('rows').innerHTML=names.map(n=>`<tr><td>${n.replace(/</g,'&lt;')}</td>`+
    `<td>${(was[n]||0).toFixed(1)}</td><td>${(time[n]||0).toFixed(1)}</td></tr>`).join('');
}
document.getElementById('threshold').oninput=preview; preview();
